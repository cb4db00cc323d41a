"""On a CUDA GPU: the parts of the loop that behave differently there than on the CPU,
each against a hand-written torch reference (as tests/train/test_modes.py does on the CPU).

* the two-pass modes replay the first pass's dropout masks through the CUDA generator
  (torch.cuda.set_rng_state), not the CPU one;
* gradnorm's parameter shift and exact restore, on device tensors;
* the fused AdamW and SGD that make_optimizer picks on CUDA;
* the loop's own split of a step into micro-batches (gradient accumulation).

Those tests are marked gpu: skipped where no CUDA GPU is visible (tests/conftest.py), run
by `make gpu-check` (bench/gpu_check.py), which also covers bf16, torch.compile, every
mode at BERT-base's shape and the evaluation figures against tests/oracle.py. The tests
at the end are not marked: they run `make gpu-check`'s CPU smoke mode, so that the
script, its JSON and its table are checked in every test run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from flood_cli.config.load import load_config
from flood_cli.core.reporting import NullReporter
from flood_cli.data.prepare import INDEX, LABELS
from flood_cli.train.loop import Trainer
from tests.conftest import small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)

gpu = pytest.mark.gpu

TINY = {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}
LR = 1e-3


def cuda_trainer(tmp_path: Path, dropout: float = 0.0, **train: Any) -> Trainer:
    config = small_config(
        model={"tiny": {**TINY, "dropout": dropout}},
        train={"batch_size": 16, "weight_decay": 0.0, "max_grad_norm": None, "warmup_ratio": 0.0, "schedule": "constant", **train},
        runtime={"device": "cuda", "precision": "fp32"},
        output={"dir": str(tmp_path / "runs")},
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Trainer(load_config(write_config(tmp_path, config)), NullReporter())


def one_step(trainer: Trainer) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor], torch.nn.Module, torch.Tensor]:
    """The first step's micro-batches, the weights after it, the model before it, and the
    CUDA generator's state when it began."""
    plan, micro_batches = next(trainer.epoch_steps(0))
    saved = [{key: value.clone() for key, value in batch.items()} for batch in micro_batches]
    before = copy.deepcopy(trainer.raw_model)
    rng = torch.cuda.get_rng_state()
    trainer.train_step(plan, micro_batches)
    torch.cuda.synchronize()
    return saved, {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}, before, rng


def losses_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key not in (LABELS, INDEX)}
    return F.cross_entropy(model(**inputs).logits.float(), batch[LABELS], reduction="none")


def gradient_at(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    model.zero_grad()
    losses_of(model, batch).mean().backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def close(got: dict[str, torch.Tensor], model: torch.nn.Module, atol: float = 1e-6) -> bool:
    # GPU reductions may add in another order than the reference's: float rounding only.
    return all(torch.allclose(got[n], p.detach(), rtol=1e-4, atol=atol) for n, p in model.named_parameters())


@gpu
def test_the_check_runs_on_cuda(tmp_path):
    trainer = cuda_trainer(tmp_path)
    assert trainer.accelerator.device.type == "cuda"
    assert all(p.is_cuda for p in trainer.raw_model.parameters())


@gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_backstitch_replays_the_cuda_dropout_masks(tmp_path, dropout):
    """θ₁ = θ + α·η·∇L(θ), θ₂ = θ₁ − (1 + α)·η·∇L(θ₁), both passes with the first pass's
    masks (fused SGD). With dropout, a reference that draws fresh masks for the second
    pass must not match: the replay is what is tested."""
    alpha, lr = 0.3, 0.05
    trainer = cuda_trainer(tmp_path, dropout=dropout, mode="backstitch", lr=lr, backstitch={"scale": alpha})
    (batch,), got, start, rng = one_step(trainer)

    def reference(replay: bool) -> torch.nn.Module:
        model = copy.deepcopy(start).train()
        torch.cuda.set_rng_state(rng)
        for rate in (-alpha * lr, (1 + alpha) * lr):
            if replay:
                torch.cuda.set_rng_state(rng)
            grads = gradient_at(model, batch)
            with torch.no_grad():
                for param, grad in zip(model.parameters(), grads, strict=True):
                    param -= rate * grad
        return model

    assert close(got, reference(replay=True))
    if dropout:
        assert not close(got, reference(replay=False))


@gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradnorm_shifts_restores_and_replays_on_cuda(tmp_path, dropout):
    """g = (1 − α)·∇L(θ) + α·∇L(θ + r·∇L/‖∇L‖), both with the same masks, then fused
    AdamW from the restored θ."""
    r, alpha = 0.05, 0.8
    trainer = cuda_trainer(tmp_path, dropout=dropout, mode="gradnorm", lr=LR, gradnorm={"r": r, "alpha": alpha})
    (batch,), got, start, rng = one_step(trainer)
    assert trainer.optimizers[0].optimizer.defaults["fused"]

    def reference(replay: bool) -> torch.nn.Module:
        model = copy.deepcopy(start).train()
        torch.cuda.set_rng_state(rng)
        first = gradient_at(model, batch)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in first]))
        with torch.no_grad():
            for param, g in zip(model.parameters(), first, strict=True):
                param += r * g / norm
        if replay:
            torch.cuda.set_rng_state(rng)
        second = gradient_at(model, batch)
        restored = copy.deepcopy(start).train()
        optimizer = torch.optim.AdamW(restored.parameters(), lr=LR, weight_decay=0.0, foreach=False)
        for param, g1, g2 in zip(restored.parameters(), first, second, strict=True):
            param.grad = (1 - alpha) * g1 + alpha * g2
        optimizer.step()
        return restored

    assert close(got, reference(replay=True))
    if dropout:
        assert not close(got, reference(replay=False))


@gpu
def test_fused_adamw_step_with_clipping_and_weight_decay(tmp_path):
    """A baseline step on CUDA (fused AdamW, decay on matrices only, clipping at 0.1) is
    torch's plain AdamW on the clipped gradient of the batch's mean loss."""
    trainer = cuda_trainer(tmp_path, lr=LR, weight_decay=0.1, max_grad_norm=0.1)
    assert all(opt.optimizer.defaults["fused"] for opt in trainer.optimizers)
    (batch,), got, model, _ = one_step(trainer)
    model.train()
    grads = gradient_at(model, batch)
    for param, grad in zip(model.parameters(), grads, strict=True):
        param.grad = grad
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    torch.optim.AdamW(groups, lr=LR, foreach=False).step()
    assert close(got, model)


@gpu
def test_accumulated_micro_batches_make_the_steps_mean_gradient(tmp_path):
    """batch 8 × 3 accumulation steps: the loop's micro-batches (padded each to its own
    length) give the gradient of the mean loss over the 24 examples (fused SGD)."""
    lr = 0.05
    trainer = cuda_trainer(tmp_path, lr=lr, batch_size=8, grad_accum_steps=3, optimizer="sgd")
    batches, got, model, _ = one_step(trainer)
    assert len(batches) == 3
    total = sum(len(batch[LABELS]) for batch in batches)
    assert total == 24
    model.train().zero_grad()
    (sum(losses_of(model, batch).sum() for batch in batches) / total).backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= lr * param.grad
    assert close(got, model)


# ---------------------------------------------------------------------------
# Not marked gpu: `make gpu-check` itself, at its CPU smoke shape, so that the script, its
# JSON and its table cannot rot on machines without a GPU.


def run_gpu_check(tmp_path: Path, **env: str) -> tuple[Any, dict[str, Any]]:
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    environment = {**os.environ, "FLOOD_GPU_CHECK_DEVICE": "cpu", "OUT": str(tmp_path) + "/", "PYTHON": sys.executable, **env}
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    written = list(tmp_path.glob("gpu-check-*.json"))
    assert len(written) == 1, done.stdout + done.stderr
    return done, json.loads(written[0].read_text())


def test_gpu_check_smoke_run_on_the_cpu(tmp_path):
    """Every stage at the tiny shape (two modes to keep it short): the JSON's figures
    against a recomputation from the losses it lists, and the table shows each."""
    import math

    done, report = run_gpu_check(tmp_path, FLOOD_GPU_CHECK_MODES="baseline,gradnorm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] and report["failed"] == [] and report["smoke"] and report["device"] == "cpu"
    assert set(report["stage_seconds"]) == {"precision", "oracle", "pytest", "bench"}
    # The tolerance's closed form for 2 layers: 2·sqrt(8)·2^-8.
    assert report["tolerance"] == pytest.approx(2 * 8**0.5 / 256)
    precision = report["precision"]
    assert set(precision["modes"]) == {"baseline", "gradnorm"}
    worst = 0.0
    for mode, entry in precision["modes"].items():
        fp32, bf16 = entry["fp32"]["losses"], entry["bf16"]["losses"]
        assert len(fp32) == len(bf16) == precision["steps"] == 6
        assert all(math.isfinite(v) and 0 < v < 5 for v in fp32 + bf16)
        diff = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(bf16, fp32, strict=True))
        assert entry["bf16"]["max_rel_diff"] == pytest.approx(diff, rel=1e-12)
        assert 0 < diff <= report["tolerance"]  # bf16 is not fp32: some difference, within the bound
        worst = max(worst, diff, entry["bf16"]["val_rel_diff"])
        assert f"{mode} bf16 vs fp32, 6 steps" in done.stdout
    assert precision["max_rel_diff_observed"] == pytest.approx(worst)
    oracle_check = report["oracle"]["variants"]
    assert set(oracle_check) == {"fp32", "bf16"}
    for entry in oracle_check.values():
        assert (entry["val"]["oracle"]["examples"], entry["test"]["oracle"]["examples"]) == (37, 23)
        assert entry["val"]["flood"]["examples"] == 37
    # Every gpu test is collected, and skipped without CUDA.
    assert report["pytest"]["counts"] == {"skipped": 7, "deselected": 3}
    bench = report["bench"]
    assert [(w["workload"], w["compile"]) for w in bench["workloads"]] == [("base-b32-len128", False), ("base-b128-len128", False), ("base-b32-short", False)]
    assert len(bench["targets"]) == 3
    for row in bench["targets"]:
        (summary,) = [w for w in bench["workloads"] if w["workload"] == row["workload"]]
        measured = summary["results"]["flood_baseline"][row["metric"]]
        assert row["measured"] == measured
        assert row["met"] == (None if measured is None else measured >= row["min"])
        assert row["target"] in done.stdout
    assert "stage times: precision" in done.stdout and "all checks passed" in done.stdout


def test_gpu_check_fails_when_bf16_is_off_by_more_than_the_tolerance(tmp_path):
    """A bound no bf16 run can meet: the check says which comparison failed, exit status 1."""
    done, report = run_gpu_check(tmp_path, FLOOD_GPU_CHECK_MODES="baseline", FLOOD_GPU_CHECK_STAGES="precision", FLOOD_GPU_CHECK_TOLERANCE="1e-9")
    assert done.returncode == 1
    assert report["failed"] == ["precision"] and not report["precision"]["modes"]["baseline"]["bf16"]["ok"]
    assert "FAILED: precision" in done.stdout
    assert any(line.startswith("baseline bf16 vs fp32") and line.rstrip().endswith("FAILED") for line in done.stdout.splitlines())


def test_oracle_comparison_fails_on_a_changed_figure():
    """compare_with_oracle: equal figures pass; a loss off by 1e-3 or one more correct
    example fails in fp32; in bf16 a count may differ only by the near-ties."""
    import sys

    from tests import oracle
    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    truth = oracle.Figures(loss=0.7, correct=20, examples=37, top10_share=0.2, confidence=0.6, ece=0.1, confident_wrong=0)
    got = {"loss": 0.7, "top10_share": 0.2, "confidence": 0.6, "ece": 0.1, "correct": 20, "confident_wrong": 0, "examples": 37}
    rows = [(0.7, True, 0.6)] * 36 + [(0.7, False, 0.501)]
    assert gpu_check.compare_with_oracle(got, truth, rows, exact=True, tol=0.02)["ok"]
    assert not gpu_check.compare_with_oracle({**got, "loss": 0.701}, truth, rows, exact=True, tol=0.02)["ok"]
    assert not gpu_check.compare_with_oracle({**got, "correct": 21}, truth, rows, exact=True, tol=0.02)["ok"]
    assert gpu_check.compare_with_oracle({**got, "correct": 21}, truth, rows, exact=False, tol=0.02)["ok"]  # one near-tie
    assert not gpu_check.compare_with_oracle({**got, "correct": 22}, truth, rows, exact=False, tol=0.02)["ok"]
    assert not gpu_check.compare_with_oracle({**got, "loss": 0.75}, truth, rows, exact=False, tol=0.02)["ok"]
