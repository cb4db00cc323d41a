"""The modes add no host-device synchronisation to a training step.

A GPU step stalls whenever the host reads a device value: ``.item()``, ``bool(t)``,
``float(t)``, ``int(t)`` (all the aten op ``_local_scalar_dense``), ``.tolist()``,
``.cpu()``, ``.numpy()``. On the CPU these are cheap, but they are the same calls, so
counting them here tells what a GPU step would wait for. A flooding or alternate step
must make exactly the calls a baseline step makes (the optimizer's own bookkeeping
included), and the loop itself none.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from flood_cli.config.load import load_config
from flood_cli.core.reporting import NullReporter
from flood_cli.train import objectives
from flood_cli.train import setup as train_setup
from flood_cli.train.loop import Trainer
from tests.conftest import small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)

READS = ("item", "tolist", "cpu", "numpy")
TRANSFORMERS_5 = pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5, reason="the SDPA mask format needs transformers 5"
)


class HostReads(TorchDispatchMode):
    """Counts the ways the host can read a tensor's value while it is active."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.counts: Counter[str] = Counter()
        for name in READS[1:]:  # .item() goes through _local_scalar_dense, counted below
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts["item/bool/float/int"] += 1
        return func(*args, **(kwargs or {}))


def trainer_for(tmp_path, max_length: int = 48, **train) -> Trainer:
    config = small_config(train=train, data={"max_length": max_length}, output={"dir": str(tmp_path / "runs")})
    return Trainer(load_config(write_config(tmp_path, config)), NullReporter())


def host_reads_per_step(trainer: Trainer, monkeypatch, steps: int = 4) -> Counter:
    trainer.model.train()
    batches = trainer.epoch_steps(0)
    trainer.train_step(*next(batches))  # first step: optimizer state is created lazily
    trainer.progress.step += 1
    with monkeypatch.context() as patch:
        reads = HostReads(patch)
        for _ in range(steps):
            step, micro_batches = next(batches)
            with reads:
                trainer.train_step(step, micro_batches)
            trainer.progress.step += 1
    return reads.counts


MODES = {
    "baseline": {"mode": "baseline"},
    "flooding (every step descends)": {"mode": "flooding", "b": 0.01},
    "flooding (every step ascends)": {"mode": "flooding", "b": 50.0},
    "alternate, separate optimizers": {"mode": "alternate", "ascent_lr": 1e-4, "ascent_optimizer": "separate"},
    "alternate, shared optimizer": {"mode": "alternate", "ascent_lr": 1e-4, "ascent_optimizer": "shared"},
    "baseline without clipping": {"mode": "baseline", "max_grad_norm": None},
    "flooding without clipping": {"mode": "flooding", "b": 0.5, "max_grad_norm": None},
}


@pytest.fixture(scope="module")
def baseline_reads(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        return host_reads_per_step(trainer_for(tmp_path_factory.mktemp("base"), mode="baseline"), monkeypatch)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("train", MODES.values(), ids=MODES.keys())
def test_a_mode_reads_from_the_device_exactly_what_the_baseline_reads(tmp_path, monkeypatch, baseline_reads, train):
    assert host_reads_per_step(trainer_for(tmp_path, **train), monkeypatch) == baseline_reads


def without_optimizer_step(trainer: Trainer, monkeypatch) -> Trainer:
    for optimizer in trainer.optimizers:
        monkeypatch.setattr(optimizer, "step", lambda *args, **kwargs: None)
    return trainer


@TRANSFORMERS_5
@pytest.mark.parametrize("max_length", [48, 256], ids=["batches without padding", "padded batches"])
def test_the_loop_itself_reads_nothing_from_the_device(tmp_path, monkeypatch, max_length):
    """What a baseline step reads comes from torch's AdamW (non-fused AdamW keeps its
    step count on the host; it is fused, with the count on the device, on CUDA), not
    from the loop or the model: with the optimizer step replaced, nothing is read."""
    trainer = without_optimizer_step(trainer_for(tmp_path, max_length, mode="flooding", b=0.5), monkeypatch)
    _, (batch,) = next(trainer.epoch_steps(0))
    assert ("attention_mask" in batch) == (max_length == 256)
    assert host_reads_per_step(trainer, monkeypatch) == Counter()


@TRANSFORMERS_5
def test_a_2d_padding_mask_makes_transformers_read_the_device(tmp_path, monkeypatch):
    """Why batches carry the SDPA mask format: given the usual 2-D mask, transformers 5
    asks the device whether any token is padding, once per forward pass."""
    monkeypatch.setattr(train_setup, "attention_format", lambda model: "2d")
    trainer = without_optimizer_step(trainer_for(tmp_path, 48, mode="flooding", b=0.5), monkeypatch)
    assert host_reads_per_step(trainer, monkeypatch)["item/bool/float/int"] == 4


def test_the_counter_catches_a_mode_that_reads_its_loss(tmp_path, monkeypatch, baseline_reads):
    """The check above can fail: a flooding sign computed on the host is caught."""

    def host_sign(loss, flood_level):
        return -1.0 if loss.item() < flood_level else 1.0

    monkeypatch.setattr(objectives, "flood_sign", host_sign)
    reads = host_reads_per_step(trainer_for(tmp_path, mode="flooding", b=0.5), monkeypatch)
    assert reads["item/bool/float/int"] == baseline_reads["item/bool/float/int"] + 4


def test_skipping_nonfinite_steps_reads_once_per_step(tmp_path, monkeypatch, baseline_reads):
    """on_nonfinite: skip is the one documented per-step read (stop reads at evaluation)."""
    reads = host_reads_per_step(trainer_for(tmp_path, mode="flooding", b=0.5, on_nonfinite="skip"), monkeypatch)
    assert reads["item/bool/float/int"] == baseline_reads["item/bool/float/int"] + 4
