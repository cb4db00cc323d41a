"""Set-up of a run: the Accelerator, the optimizers, and the data, the model and the
batching that the loop trains with; the package versions a run records."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from flood_cli import __version__
from flood_cli.config.schema import Config, RuntimeConfig, TrainConfig
from flood_cli.core.errors import FloodError
from flood_cli.core.reporting import Reporter
from flood_cli.data.batches import Collator, EpochShuffleSampler
from flood_cli.data.prepare import PreparedData, prepare_data
from flood_cli.model import attention_format, build_model, load_tokenizer, quiet_transformers
from flood_cli.runs.folder import now_iso
from flood_cli.train.evaluate import EvalSplit
from flood_cli.train.objectives import Mode, make_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Accelerate set-ups that shard the model or its gradients. Flooding's sign, clipping
# and the ascent steps work on whole gradients after the all-reduce; under these each
# process would hold only a shard of them.
SHARDED = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP", "MEGATRON_LM": "Megatron-LM", "XLA": "XLA"}


def cpu_threads(omp_num_threads: str | None, available: int, torch_default: int) -> tuple[int, str]:
    """A CPU run's thread count and the line that says why. OMP_NUM_THREADS, when set to
    a whole number (a sweep sets each worker's share), decides; otherwise one thread per
    core this process may use (its CPU affinity), at most torch's default (its count of
    physical cores): more threads than cores only contend."""
    if omp_num_threads is not None and omp_num_threads.strip().isdigit() and int(omp_num_threads) > 0:
        threads = int(omp_num_threads)
        return threads, f"CPU: {threads} thread{'s' * (threads != 1)} (OMP_NUM_THREADS={threads})"
    threads = max(1, min(available, torch_default))
    why = f"the {available} core(s) this process may use" if threads == available else f"torch's default, below the {available} cores this process may use"
    return threads, f"CPU: {threads} thread{'s' * (threads != 1)} ({why}; set OMP_NUM_THREADS to change)"


_TORCH_DEFAULT_THREADS: list[int] = []  # torch's own count, read before flood first sets it


def set_cpu_threads() -> str:
    """Sets torch's thread count for a CPU run (see `cpu_threads`); returns the line to show."""
    if not _TORCH_DEFAULT_THREADS:
        _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads, line = cpu_threads(os.environ.get("OMP_NUM_THREADS"), available, _TORCH_DEFAULT_THREADS[0])
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return line


def make_accelerator(runtime: RuntimeConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    if runtime.device == "cuda" and not cuda:
        raise FloodError("runtime.device is cuda but no CUDA GPU is visible; use device auto or cpu")
    use_cpu = runtime.device == "cpu" or not cuda
    precision = runtime.precision
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and use_cpu:
        raise FloodError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    # Several runs in one process (tests, sweeps) each get a fresh Accelerate state.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision="no" if precision == "fp32" else precision,
        # Host-to-device copies of pinned batches overlap with compute.
        dataloader_config=DataLoaderConfiguration(non_blocking=not use_cpu),
    )
    sharded = SHARDED.get(str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)))
    if sharded is not None:
        raise FloodError(
            f"accelerate is configured for {sharded}, which flood does not support (flooding, clipping and ascent steps "
            "need whole gradients on every process); launch with a plain multi-GPU config (`accelerate config`: "
            "no DeepSpeed/FSDP) or with torchrun"
        )
    return accelerator


def make_optimizer(
    model: torch.nn.Module, train: TrainConfig, device: torch.device, kind: str = "adamw"
) -> torch.optim.Optimizer:
    """An optimizer of the kind a mode asks for, without weight decay on biases and
    LayerNorm weights (BERT's recipe).

    * ``adamw``: a mode's descent optimizer: AdamW (fused on CUDA), or plain SGD where
      ``train.optimizer`` is sgd.
    * ``adamw_ascent``: the ascent optimizer of mode alternate: it maximizes the loss,
      keeps moments of its own, and leaves weight decay to the descent optimizer.
    * ``sgd``: plain SGD without momentum (backstitch, as Kaldi requires)."""
    if kind == "adamw" and train.optimizer == "sgd":
        kind = "sgd"
    ascent = kind == "adamw_ascent"
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": 0.0 if ascent else train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=0.0, fused=fused or None)
    if kind not in ("adamw", "adamw_ascent"):
        raise ValueError(f"unknown optimizer kind {kind!r}")
    lr = train.ascent_lr if ascent else train.lr
    assert lr is not None, "validation requires ascent_lr in mode alternate"
    return torch.optim.AdamW(groups, lr=lr, maximize=ascent, fused=fused or None)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"flood": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class Pieces:
    """What a run trains with, built in the order that fixes its random draws."""

    tokenizer: Any
    data: PreparedData
    model: PreTrainedModel  # the plain model, not yet compiled or prepared by Accelerate
    mode: Mode
    optimizers: list[torch.optim.Optimizer]
    pin: bool  # pinned batches copy to the GPU without blocking
    order: EpochShuffleSampler
    collate: Collator
    eval_splits: dict[str, EvalSplit]


def build(cfg: Config, reporter: Reporter, accelerator: Any, levels: torch.Tensor | None) -> Pieces:
    """Tokenizer and data, then the model (after the seed), the mode, its optimizers, and
    the batching of the training and evaluation splits."""
    from accelerate.utils import set_seed

    quiet_transformers()
    reporter.message("loading tokenizer and data")
    # The main process reads and tokenizes first, filling Datasets' cache; the others
    # then read the cache instead of writing it at the same time.
    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.model)
        data = prepare_data(cfg.data, tokenizer)
    if accelerator.is_main_process:
        for warning in data.warnings:
            reporter.warning(warning)

    # The seed is set before the model is built: it fixes the classifier head's init.
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, data.label_names, tokenizer, cfg.data.max_length)
    mode = make_mode(cfg.train, None if levels is None else levels.to(accelerator.device))
    if mode.two_pass and accelerator.mixed_precision == "fp16":
        raise FloodError(
            f"mode {cfg.train.mode} makes two passes per step, which fp16's loss scaling does not support; "
            "use precision bf16 or fp32"
        )
    optimizers = [make_optimizer(model, cfg.train, accelerator.device, kind) for kind in mode.optimizers]

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    multiple = cfg.runtime.pad_to_multiple_of
    attention = attention_format(model)
    pin = accelerator.device.type == "cuda"
    processes, rank = accelerator.num_processes, accelerator.process_index
    lengths = [len(ids) for ids in data.train.input_ids] if cfg.train.group_by_length else None
    order = EpochShuffleSampler(len(data.train), cfg.train.seed, lengths, cfg.train.batch_size)
    positions = getattr(model.config, "max_position_embeddings", None)
    # Training batches carry their example indices too: per-example modes (AdaFlood) use them.
    collate = Collator(data.train, pad_id, multiple, attention, with_index=True, max_positions=positions)
    eval_splits = {
        role: EvalSplit(
            split,
            cfg.train.eval_batch_size,
            Collator(split, pad_id, multiple, attention, with_index=True, max_positions=positions),
            cfg.runtime.num_workers,
            pin,
            processes,
            rank,
        )
        for role, split in (("val", data.validation), ("test", data.test))
        if split is not None
    }
    return Pieces(tokenizer, data, model, mode, optimizers, pin, order, collate, eval_splits)


def run_meta(accelerator: Any, data: PreparedData) -> dict[str, Any]:
    """The ``meta:`` of a run's config.yaml: package versions, device, precision, labels."""
    return {
        "versions": package_versions(),
        "device": str(accelerator.device),
        "precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "started_at": now_iso(),
        "label_names": data.label_names,
    }
