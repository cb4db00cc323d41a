"""The training loop, on 🤗 Accelerate: optimizer steps, evaluation, the run folder.

Reads top to bottom like nanoGPT's train.py. The mode (baseline, flooding, alternate)
is decided once, as an object from ``objectives``; the loop only asks it for the
learning rate and the gradient sign of each step. Per-step figures are accumulated on
the device and read once per evaluation, so the hot path has no host-device sync.
"""

from __future__ import annotations

import math
import platform
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F

from flood_cli import __version__
from flood_cli.config import Config, RuntimeConfig, TrainConfig
from flood_cli.data import Collator, EpochShuffleSampler, PreparedData, TokenizedSplit, length_sorted_batches, prepare_data
from flood_cli.errors import FloodError
from flood_cli.model import build_model, load_tokenizer
from flood_cli.objectives import Mode, apply_sign, is_ascent, lr_scale, make_mode
from flood_cli.runs import BEST_MODEL_DIR, METRICS_COLUMNS, TEST_COLUMNS, RunDir, check_writable, default_run_name, now_iso


class Reporter(Protocol):
    """What the loop tells the outside world (the CLI draws a progress bar from it)."""

    live_loss_every: int

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None: ...
    def step(self, step: int, epoch: float, loss: Optional[float]) -> None: ...
    def evaluation(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


class NullReporter:
    live_loss_every = 0

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        pass

    def step(self, step: int, epoch: float, loss: Optional[float]) -> None:
        pass

    def evaluation(self, row: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class RunResult:
    run_dir: Path
    status: str
    best_val_loss: float
    best_epoch: float
    best_step: int
    rows: list[dict[str, Any]]


# ---------------------------------------------------------------------------
# Set-up pieces


def make_accelerator(runtime: RuntimeConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

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
    return Accelerator(cpu=use_cpu, mixed_precision="no" if precision == "fp32" else precision)


def make_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, without weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=train.lr, fused=fused or None)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"flood": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# ---------------------------------------------------------------------------
# Evaluation


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: Any, accelerator: Any) -> dict[str, float]:
    """Mean loss, accuracy, and the share of the loss carried by the worst 10 % of examples."""
    model.eval()
    losses, correct = [], []
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        losses.append(F.cross_entropy(logits, labels, reduction="none"))
        correct.append(logits.argmax(dim=-1) == labels)
    model.train()
    all_losses = accelerator.gather_for_metrics(torch.cat(losses))
    all_correct = accelerator.gather_for_metrics(torch.cat(correct))
    total = all_losses.sum()
    worst = max(1, math.ceil(0.1 * all_losses.numel()))
    top_share = torch.topk(all_losses, worst).values.sum() / total.clamp_min(1e-12)
    return {
        "loss": (total / all_losses.numel()).item(),
        "accuracy": all_correct.double().mean().item(),
        "top10_share": top_share.item(),
    }


def _eval_loader(split: TokenizedSplit, batch_size: int, pad_id: int, multiple: Optional[int], workers: int) -> Any:
    return torch.utils.data.DataLoader(
        length_sorted_batches(split, batch_size),
        batch_size=None,
        collate_fn=Collator(split, pad_id, multiple),
        num_workers=workers,
    )


# ---------------------------------------------------------------------------
# The loop


class _Interval:
    """Figures of the optimizer steps since the last evaluation, kept on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = lambda: torch.zeros((), device=self.device, dtype=torch.float64)  # noqa: E731
        self.loss_sum, self.objective_sum, self.correct = zero(), zero(), zero()
        self.ascent_steps = zero()
        self.examples = 0
        self.steps = 0

    def read(self) -> dict[str, float]:
        examples = max(self.examples, 1)
        return {
            "train_loss": self.loss_sum.item() / examples,
            "train_objective": self.objective_sum.item() / examples,
            "train_accuracy": self.correct.item() / examples,
            "flood_active": self.ascent_steps.item() / max(self.steps, 1),
        }


def run_training(cfg: Config, reporter: Optional[Reporter] = None) -> RunResult:
    """Train one run as configured and leave its folder behind; return the best figures."""
    reporter = reporter or NullReporter()
    started = time.time()
    out_dir = Path(cfg.output.dir)
    check_writable(out_dir)  # before any expensive work

    accelerator = make_accelerator(cfg.runtime)
    from accelerate.utils import set_seed

    reporter.message("loading tokenizer and data")
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg.data, tokenizer)

    # The seed is set before the model is built: it fixes the classifier head's init.
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, data.label_names, tokenizer, cfg.data.max_length)
    optimizer = make_optimizer(model, cfg.train, accelerator.device)
    mode = make_mode(cfg.train.mode, cfg.train.lr, cfg.train.b, cfg.train.ascent_lr)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    multiple = 8
    sampler = EpochShuffleSampler(len(data.train), cfg.train.seed)
    train_loader = torch.utils.data.DataLoader(
        list(range(len(data.train))),
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        collate_fn=Collator(data.train, pad_id, multiple),
        num_workers=cfg.runtime.num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )
    eval_loaders = {
        role: _eval_loader(split, cfg.train.eval_batch_size, pad_id, multiple, cfg.runtime.num_workers)
        for role, split in (("val", data.validation), ("test", data.test))
        if split is not None
    }
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loaders = {role: accelerator.prepare(loader) for role, loader in eval_loaders.items()}

    run = _open_run(cfg, accelerator, data, mode, started) if accelerator.is_main_process else None
    try:
        result = _loop(cfg, accelerator, model, optimizer, train_loader, sampler, eval_loaders, mode, data, tokenizer, run, reporter, started)
    except KeyboardInterrupt:
        if run is not None:
            run.write_summary(status="interrupted", error="interrupted by the user", finished_at=now_iso())
        raise
    except BaseException as exc:
        if run is not None:
            run.write_summary(status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=now_iso())
        raise
    finally:
        if run is not None:
            run.close()
    return result


def _open_run(cfg: Config, accelerator: Any, data: PreparedData, mode: Mode, started: float) -> RunDir:
    train = cfg.train
    default = default_run_name(train.mode, train.lr, train.seed, train.b, train.ascent_lr)
    run = RunDir.create(Path(cfg.output.dir), cfg.output.name, default)
    meta = {
        "versions": package_versions(),
        "device": str(accelerator.device),
        "precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "started_at": now_iso(),
        "label_names": data.label_names,
    }
    experiment = cfg.experiment_dict()
    experiment["output"]["name"] = run.path.name
    run.write_config(experiment, meta)
    run.open_metrics(METRICS_COLUMNS + (TEST_COLUMNS if data.test is not None else ()))
    run.write_summary(
        status="running",
        error=None,
        name=run.path.name,
        mode=train.mode,
        b=train.b,
        lr=train.lr,
        ascent_lr=train.ascent_lr,
        seed=train.seed,
        epochs=train.epochs,
        model=cfg.model.describe(),
        data=data.description,
        num_labels=len(data.label_names),
        num_train_examples=data.counts.get("train", 0),
        num_val_examples=data.counts.get("validation", 0),
        num_test_examples=data.counts.get("test", 0),
        started_at=now_iso(),
    )
    return run


def _loop(
    cfg: Config,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Any,
    sampler: EpochShuffleSampler,
    eval_loaders: dict[str, Any],
    mode: Mode,
    data: PreparedData,
    tokenizer: Any,
    run: Optional[RunDir],
    reporter: Reporter,
    started: float,
) -> RunResult:
    train = cfg.train
    accum = train.grad_accum_steps
    batches_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = steps_per_epoch * train.epochs
    warmup_steps = int(train.warmup_ratio * total_steps)
    eval_every = steps_per_epoch if train.eval_every == "epoch" else int(train.eval_every)
    params = [p for p in model.parameters() if p.requires_grad]
    device = accelerator.device
    # Flooding needs the mean loss over all processes; the other modes never read it.
    reduce_loss = accelerator.num_processes > 1 and mode.name == "flooding"

    interval = _Interval(device)
    rows: list[dict[str, Any]] = []
    best = {"val_loss": math.inf, "epoch": 0.0, "step": 0, "val_accuracy": math.nan}
    reporter.start(total_steps, steps_per_epoch, train.epochs)
    model.train()
    step = 0
    for epoch in range(train.epochs):
        sampler.set_epoch(epoch)
        batches = iter(train_loader)
        for _ in range(steps_per_epoch):
            # An optimizer step's micro-batches are drawn first, so that each one's loss
            # can be weighted by its share of the step's examples: the accumulated
            # gradient is then exactly that of the step's mean loss.
            micro_batches = [batch for _, batch in zip(range(accum), batches)]
            step_examples = sum(int(b["labels"].shape[0]) for b in micro_batches)

            scale = lr_scale(step, total_steps, warmup_steps, train.schedule)
            lr = mode.learning_rate(step, scale)
            for group in optimizer.param_groups:
                group["lr"] = lr

            step_loss_sum = torch.zeros((), device=device, dtype=torch.float32)
            for index, batch in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                # Gradients are synchronised across processes once, on the last micro-batch.
                with nullcontext() if last else accelerator.no_sync(model):
                    labels = batch.pop("labels")
                    logits = model(**batch).logits.float()
                    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
                    accelerator.backward(loss_sum / step_examples)
                step_loss_sum += loss_sum.detach()
                interval.correct += (logits.detach().argmax(dim=-1) == labels).sum()

            step_loss = step_loss_sum / step_examples
            if reduce_loss:
                step_loss = accelerator.reduce(step_loss, reduction="mean")
            # The mode flips the gradient of this step where it calls for ascent.
            sign = mode.gradient_sign(step, step_loss)
            apply_sign([p.grad for p in params if p.grad is not None], sign)
            if train.max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            interval.loss_sum += step_loss_sum
            interval.objective_sum += mode.objective(step_loss, sign).detach() * step_examples
            interval.ascent_steps += is_ascent(sign)
            interval.examples += step_examples
            interval.steps += 1
            step += 1

            live = reporter.live_loss_every and step % reporter.live_loss_every == 0
            reporter.step(step, step / steps_per_epoch, step_loss.item() if live else None)

            if step % eval_every == 0 or step == total_steps:
                # The lr column is the schedule's (descent) rate, whatever this step's mode.
                row = _evaluate_row(model, eval_loaders, accelerator, interval, step, steps_per_epoch, train.lr * scale, best, started)
                rows.append(row)
                if row["val_loss"] < best["val_loss"]:
                    best.update(val_loss=row["val_loss"], epoch=row["epoch"], step=step, val_accuracy=row["val_accuracy"])
                    if cfg.output.save_best_model:
                        _save_best(accelerator, model, tokenizer, run)
                row["best_val_loss"] = best["val_loss"]
                if run is not None:
                    run.append_metrics(row)
                    run.write_summary(
                        **_best_fields(best),
                        final_val_loss=row["val_loss"],
                        final_val_accuracy=row["val_accuracy"],
                        steps_completed=step,
                        total_steps=total_steps,
                    )
                reporter.evaluation(row)
                if not math.isfinite(row["train_loss"]):
                    raise FloodError(
                        f"training loss became {row['train_loss']} by step {step}; lower train.lr or use precision fp32/bf16"
                    )

    if run is not None:
        run.write_summary(status="completed", finished_at=now_iso())
    return RunResult(
        run_dir=run.path if run is not None else Path(cfg.output.dir),
        status="completed",
        best_val_loss=best["val_loss"],
        best_epoch=best["epoch"],
        best_step=best["step"],
        rows=rows,
    )


def _best_fields(best: dict[str, Any]) -> dict[str, Any]:
    return {
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "best_val_accuracy": best["val_accuracy"],
    }


def _evaluate_row(
    model: torch.nn.Module,
    eval_loaders: dict[str, Any],
    accelerator: Any,
    interval: _Interval,
    step: int,
    steps_per_epoch: int,
    lr: float,
    best: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    figures = interval.read()
    interval.reset()
    val = evaluate(model, eval_loaders["val"], accelerator)
    row: dict[str, Any] = {
        "epoch": round(step / steps_per_epoch, 4),
        "step": step,
        **figures,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "best_val_loss": min(best["val_loss"], val["loss"]),
        "lr": lr,
        "val_loss_top10_share": val["top10_share"],
        "elapsed_s": round(time.time() - started, 3),
    }
    if "test" in eval_loaders:
        test = evaluate(model, eval_loaders["test"], accelerator)
        row["test_loss"], row["test_accuracy"] = test["loss"], test["accuracy"]
    # Column order as in the CSV header.
    order = list(METRICS_COLUMNS) + [c for c in TEST_COLUMNS if c in row]
    return {key: row[key] for key in order}


def _save_best(accelerator: Any, model: torch.nn.Module, tokenizer: Any, run: Optional[RunDir]) -> None:
    """Save the best model next to the metrics, replacing the previous best atomically."""
    accelerator.wait_for_everyone()
    if run is None:
        return
    final = run.path / BEST_MODEL_DIR
    staging = run.path / f".{BEST_MODEL_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    old = run.path / f".{BEST_MODEL_DIR}.old"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
