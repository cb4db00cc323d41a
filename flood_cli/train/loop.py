"""The training loop, on 🤗 Accelerate: optimizer steps, evaluation, checkpoints, resume.

Reads top to bottom like nanoGPT's train.py. The mode (baseline, flooding, alternate)
is decided once, as an object from ``objectives``; the loop only asks it for the
learning rate and the gradient sign of each step. Per-step figures are accumulated on
the device and read once per evaluation, so the hot path has no host-device sync.

Batches are shared out by the loop itself, not by Accelerate's data loaders: every
process computes the same plan of optimizer steps from the (seed, epoch) order, takes
its share of each step and knows each step's example count over all processes. That is
what keeps the numbers exact on any split size and process count: a step's gradient is
that of its mean loss even when the shards are uneven, no example is repeated to even
them out, and every evaluation scores each example of its split exactly once.

A run checkpoints at every evaluation (and every ``output.checkpoint_every`` steps):
model, optimizer, scaler, RNG states, data position and the figures since the last
evaluation, snapshot to the CPU and written by a background thread. The data order
depends only on (seed, epoch), so a resumed run repeats exactly the steps the stopped
one would have taken.
"""

from __future__ import annotations

import csv
import math
import platform
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flood_cli import __version__
from flood_cli.config.schema import Config, RuntimeConfig, TrainConfig, changed_keys, changes_text, load_config
from flood_cli.core.errors import FloodError, RunInterrupted, UnresumableRun, shown
from flood_cli.core.reporting import NullReporter, Reporter
from flood_cli.data.prepare import (
    INDEX,
    LABELS,
    Collator,
    EpochShuffleSampler,
    PreparedData,
    StepBatches,
    TokenizedSplit,
    eval_shard,
    length_sorted_batches,
    plan_steps,
    prepare_data,
)
from flood_cli.model import attention_format, build_model, load_tokenizer, quiet_transformers
from flood_cli.runs.columns import columns_for
from flood_cli.runs.folder import (
    CONFIG_FILE,
    METRICS_FILE,
    RunDir,
    check_writable,
    default_run_name,
    now_iso,
    read_metrics,
)
from flood_cli.train import checkpoint
from flood_cli.train.objectives import Mode, Pass, clip_and_sign, lr_scale, make_mode


@dataclass
class RunResult:
    run_dir: Path
    status: str
    best_val_loss: float
    best_epoch: float
    best_step: int
    rows: list[dict[str, Any]]
    is_main_process: bool = True


# Accelerate set-ups that shard the model or its gradients. Flooding's sign, clipping
# and the ascent steps work on whole gradients after the all-reduce; under these each
# process would hold only a shard of them.
SHARDED = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP", "MEGATRON_LM": "Megatron-LM", "XLA": "XLA"}


# ---------------------------------------------------------------------------
# Set-up pieces


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
    decay, no_decay = [], []
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
    return torch.optim.AdamW(groups, lr=train.ascent_lr if ascent else train.lr, maximize=ascent, fused=fused or None)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"flood": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def step_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of a micro-batch, in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


# ---------------------------------------------------------------------------
# Evaluation


class EvalSplit:
    """One evaluation split and this process's share of it: whole length-sorted batches,
    every ``num_processes``-th one, so that the processes together score each example
    exactly once (a process may have none)."""

    def __init__(
        self, split: TokenizedSplit, batch_size: int, collate: Collator, workers: int, pin: bool, num_processes: int, rank: int
    ):
        self.size = len(split)
        self.batches = eval_shard(length_sorted_batches(split, batch_size), num_processes, rank)
        self.loader = torch.utils.data.DataLoader(
            list(range(self.size)),
            batch_sampler=self.batches,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(0),  # leaves the global RNG (dropout) alone
        )


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: EvalSplit, accelerator: Any) -> dict[str, float]:
    """Mean loss, accuracy, and the share of the loss carried by the worst 10 % of
    examples, over every example of the split exactly once.

    Each process writes the loss and correctness of the examples it scores into a
    split-sized table at their own indices, and the tables are summed across processes.
    Not ``gather_for_metrics``: it trims the gathered tensor to the remainder of
    whichever prepared loader Accelerate last saw end (the training loader, when this
    runs at the end of an epoch), and it assumes evenly padded shards; with
    variable-size batches it dropped or repeated examples. An index table is exact
    whatever the batch sizes, split size or process count, and every process gets the
    same figures."""
    device = accelerator.device
    scores = torch.zeros((split.size, 3), dtype=torch.float64, device=device)  # loss, correct, confidence
    model.eval()
    for batch in split.loader:
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        labels, index = batch.pop(LABELS), batch.pop(INDEX)
        logits = model(**batch).logits.float()
        scores[index, 0] = F.cross_entropy(logits, labels, reduction="none").double()
        scores[index, 1] = (logits.argmax(dim=-1) == labels).double()
        scores[index, 2] = logits.softmax(dim=-1).max(dim=-1).values.double()
    model.train()
    if accelerator.num_processes > 1:
        scores = accelerator.reduce(scores, reduction="sum")  # each row is non-zero on one process only
    losses, right, confidence = scores[:, 0], scores[:, 1], scores[:, 2]
    total = losses.sum()
    worst = max(1, math.ceil(0.1 * split.size))
    top_share = torch.topk(losses, worst).values.sum() / total.clamp_min(1e-12)
    figures = torch.stack([
        total / split.size,
        right.sum(),
        top_share,
        confidence.mean(),
        calibration_error(confidence, right),
        ((confidence > CONFIDENT) & (right == 0)).sum(),
    ]).tolist()
    loss, correct_count, share, mean_confidence, ece, confident_wrong = figures
    return {
        "loss": loss,
        "accuracy": correct_count / split.size,
        "top10_share": share,
        "confidence": mean_confidence,
        "ece": ece,
        "confident_wrong": int(round(confident_wrong)),
        "correct": int(round(correct_count)),
        "examples": split.size,
    }


ECE_BINS = 15
CONFIDENT = 0.9  # "confidently wrong": the predicted class had more than this probability


def calibration_error(confidence: torch.Tensor, right: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """Expected calibration error: the examples binned by confidence into ``bins`` equal
    bins of (0, 1], and |accuracy − mean confidence| of each bin weighted by its share
    of the examples (Guo et al., 2017)."""
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1  # (k/bins, (k+1)/bins] -> k
    count = torch.zeros(bins, dtype=confidence.dtype, device=confidence.device).index_add_(0, which, torch.ones_like(confidence))
    confidence_sum = torch.zeros_like(count).index_add_(0, which, confidence)
    right_sum = torch.zeros_like(count).index_add_(0, which, right)
    return (right_sum - confidence_sum).abs().sum() / confidence.numel()


# ---------------------------------------------------------------------------
# Stopping cleanly


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second one stops at once.

    With several processes a signal may reach one of them only, or each at a different
    step; a process that stopped alone would leave the others waiting in the next
    all-reduce. So the processes agree: after each step every one contributes its flag
    to an all-reduce (max) on a small CPU (gloo) group, started without waiting and
    read one step later, and all of them stop after the same step. The flag's reduce
    never touches the GPU, and reading it a step late means no process waits for it."""

    def __init__(self, num_processes: int):
        self.signal: int | None = None
        self._group: Any = None
        self._pending: Any = None
        self._flag = torch.zeros(1, dtype=torch.int32)
        if num_processes > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")  # collective: every process creates it here

    def handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def agreed(self) -> int | None:
        """The signal every process stops for after this step, or None to go on."""
        if self._group is None:
            return self.signal
        import torch.distributed as dist

        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if self._flag.item():
                return int(self._flag.item())
        self._flag = torch.tensor([self.signal or 0], dtype=torch.int32)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return None

    def close(self) -> None:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


@contextmanager
def stop_requests(num_processes: int = 1) -> Iterator[StopRequest]:
    request = StopRequest(num_processes)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------
# The loop


class _StepTools:
    """What the loop offers a mode for one optimizer step (objectives.StepTools).

    The step's micro-batches are drawn first: each one's summed objective is divided by
    the step's example count over all processes (times the process count, as DDP
    averages gradients over processes), so the accumulated gradient is exactly that of
    the step's mean objective, however unevenly the step is shared out. The figures of
    the step's first pass are what the CSV's training columns average."""

    def __init__(self, trainer: Trainer, plan: StepBatches, micro_batches: list[dict[str, torch.Tensor]], step: int, scale: float):
        self.trainer = trainer
        self.plan = plan
        self.micro_batches = micro_batches
        self.step = step
        self.scale = scale
        self.skipped = False
        self._passes = 0
        self._rng: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._checked = False
        self.first_loss_sum: Any = None
        self.first_correct: Any = None
        self.first_loss: Any = None

    def forward_backward(self, per_example: Any = None, same_masks: bool = False) -> Pass:
        trainer = self.trainer
        accelerator, plan = trainer.accelerator, self.plan
        device = accelerator.device
        if same_masks:
            self._replay_rng()
        elif self._passes == 0 and trainer.mode.two_pass:
            self._remember_rng()
        if self._passes:
            for param in trainer.params:
                param.grad = None
        divisor = plan.examples / accelerator.num_processes
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        objective_sum = torch.zeros((), device=device, dtype=torch.float32)
        ascending = torch.zeros((), device=device, dtype=torch.float32)
        correct = torch.zeros((), device=device, dtype=torch.float64)
        for index, batch in enumerate(self.micro_batches):
            # Gradients are synchronised across processes once, on the last micro-batch.
            last = index == len(self.micro_batches) - 1
            labels, example_index = batch[LABELS], batch[INDEX]
            inputs = {key: value for key, value in batch.items() if key not in (LABELS, INDEX)}
            with nullcontext() if last else accelerator.no_sync(trainer.model):
                logits = trainer.model(**inputs).logits
                if per_example is None:
                    micro_loss = step_loss_sum(logits, labels)
                    micro_objective = micro_loss
                else:
                    losses = F.cross_entropy(logits.float(), labels, reduction="none")
                    objectives, ascends = per_example(losses, example_index)
                    micro_objective = objectives.sum()
                    micro_loss = losses.detach().sum()
                if plan.placeholder:  # joins the gradient all-reduce, contributing zero
                    micro_objective = micro_objective * 0.0
                accelerator.backward(micro_objective / divisor)
            if not plan.placeholder:  # its example is another process's: counted there
                if per_example is not None:
                    ascending += ascends.sum()
                loss_sum += micro_loss.detach()
                objective_sum += micro_objective.detach()
                correct += (logits.detach().argmax(dim=-1) == labels).sum()
        if self._passes == 0:
            self.first_loss_sum, self.first_correct = loss_sum, correct
        self._passes += 1
        if per_example is None:
            # The step's mean loss over every process: flooding's sign and the skip
            # decision are then the same on all of them (a small all-reduce, no host sync).
            total = accelerator.reduce(loss_sum, reduction="sum") if accelerator.num_processes > 1 else loss_sum
            step_loss = total / plan.examples
            result = Pass(step_loss, step_loss, 0.0, plan.examples)
        else:
            sums = torch.stack([loss_sum, objective_sum, ascending])
            if accelerator.num_processes > 1:
                sums = accelerator.reduce(sums, reduction="sum")
            result = Pass(sums[0] / plan.examples, sums[1] / plan.examples, sums[2], plan.examples)
        if self.first_loss is None:
            self.first_loss = result.loss
        return result

    def update(self, optimizer: int, lr: float, sign: Any = None, decay: float = 1.0) -> None:
        """Clip (and flip by ``sign``), step one optimizer at ``lr`` with ``decay`` times
        its weight decay, clear the gradients. With on_nonfinite: skip, a step whose loss
        is nan/inf is dropped (one sync per step)."""
        trainer = self.trainer
        chosen = trainer.optimizers[optimizer]
        if not self._finite():
            chosen.zero_grad(set_to_none=True)
            return
        # The learning rate and weight decay are set on the param groups each step (the
        # mode may switch them); the decay from the optimizer's own settings, never from
        # what a checkpoint saved of the last update.
        for group, base_decay in zip(chosen.param_groups, trainer.weight_decays[optimizer], strict=True):
            group["lr"] = lr
            group["weight_decay"] = base_decay * decay
        trainer._scale_gradients(sign, chosen)
        chosen.step()
        chosen.zero_grad(set_to_none=True)

    def _finite(self) -> bool:
        if self.skipped:
            return False
        if self.trainer.cfg.train.on_nonfinite == "skip" and not self._checked:
            self._checked = True
            self.skipped = not bool(torch.isfinite(self.first_loss))
        return not self.skipped

    def grads(self) -> list[torch.Tensor]:
        return [param.grad for param in self.trainer.params if param.grad is not None]

    def take_grads(self) -> list[torch.Tensor]:
        """The current gradients, cleared from the parameters (no copy)."""
        taken = []
        for param in self.trainer.params:
            if param.grad is not None:
                taken.append(param.grad)
                param.grad = None
        return taken

    @torch.no_grad()
    def shift_params(self, direction: list[torch.Tensor], factor: Any) -> list[torch.Tensor]:
        """θ ← θ + factor · direction; returns copies of θ to restore exactly."""
        params = [param for param in self.trainer.params]
        saved = [param.detach().clone() for param in params]
        torch._foreach_add_(params, torch._foreach_mul(direction, factor))
        return saved

    @torch.no_grad()
    def restore_params(self, saved: list[torch.Tensor]) -> None:
        torch._foreach_copy_([param for param in self.trainer.params], saved)

    def _remember_rng(self) -> None:
        cuda = torch.cuda.get_rng_state() if self.trainer.accelerator.device.type == "cuda" else None
        self._rng = (torch.get_rng_state(), cuda)

    def _replay_rng(self) -> None:
        """The first pass's dropout masks again: back to the RNG state it started from."""
        assert self._rng is not None, "a same-masks pass follows a first pass"
        cpu, cuda = self._rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


class _Interval:
    """Figures of the optimizer steps since the last evaluation, kept on the device."""

    FIELDS = ("loss_sum", "objective_sum", "correct", "ascent")

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, torch.zeros((), device=self.device, dtype=torch.float64))
        self.examples = 0
        self.steps = 0
        self.skipped = 0
        self.ascent_of = 0.0  # flood_active = ascent / ascent_of: steps, or examples (per-example modes)

    def read(self, accelerator: Any) -> dict[str, float]:
        """The interval's means over every process's examples (one sync per evaluation)."""
        sums = torch.stack([self.loss_sum, self.objective_sum, self.correct, torch.tensor(float(self.examples), device=self.device, dtype=torch.float64)])
        if accelerator.num_processes > 1:
            sums = accelerator.reduce(sums, reduction="sum")
        loss_sum, objective_sum, correct, examples = sums.tolist()
        examples = max(examples, 1.0)
        return {
            "train_loss": loss_sum / examples,
            "train_objective": objective_sum / examples,
            "train_accuracy": correct / examples,
            # The same on every process: the sign comes from the reduced loss, and a
            # per-example mode's ascending count is reduced over processes in its pass.
            "flood_active": self.ascent.item() / self.ascent_of if self.ascent_of else 0.0,
            "skipped_steps": self.skipped,
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name).cpu() for name in self.FIELDS}
        state.update(examples=self.examples, steps=self.steps, skipped=self.skipped, ascent_of=self.ascent_of)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ascent" not in state:  # a checkpoint from before flood_active counted examples
            state = {**state, "ascent": state["ascent_steps"], "ascent_of": float(state["steps"])}
        for name in self.FIELDS:
            setattr(self, name, state[name].to(self.device))
        self.examples, self.steps, self.skipped = state["examples"], state["steps"], state["skipped"]
        self.ascent_of = state["ascent_of"]


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    steps_in_epoch: int = 0
    rows_written: int = 0
    elapsed_before: float = 0.0
    # The best-loss evaluation (and its accuracy), and the best-accuracy one: often another.
    best: dict[str, Any] = field(
        default_factory=lambda: {"val_loss": math.inf, "epoch": 0.0, "step": 0, "val_accuracy": math.nan}
    )
    best_accuracy: dict[str, Any] = field(default_factory=lambda: {"val_accuracy": -math.inf, "epoch": 0.0, "step": 0})


class Trainer:
    def __init__(self, cfg: Config, reporter: Reporter, levels: torch.Tensor | None = None):
        self.cfg = cfg
        self.reporter = reporter
        self.accelerator = make_accelerator(cfg.runtime)
        from accelerate.utils import set_seed

        quiet_transformers()
        reporter.message("loading tokenizer and data")
        # The main process reads and tokenizes first, filling Datasets' cache; the others
        # then read the cache instead of writing it at the same time.
        with self.accelerator.main_process_first():
            self.tokenizer = load_tokenizer(cfg.model)
            self.data: PreparedData = prepare_data(cfg.data, self.tokenizer)
        if self.accelerator.is_main_process:
            for warning in self.data.warnings:
                reporter.warning(warning)

        # The seed is set before the model is built: it fixes the classifier head's init.
        set_seed(cfg.train.seed)
        model = build_model(cfg.model, self.data.label_names, self.tokenizer, cfg.data.max_length)
        self.mode: Mode = make_mode(cfg.train, None if levels is None else levels.to(self.accelerator.device))
        if self.mode.two_pass and self.accelerator.mixed_precision == "fp16":
            raise FloodError(
                f"mode {cfg.train.mode} makes two passes per step, which fp16's loss scaling does not support; "
                "use precision bf16 or fp32"
            )
        optimizers = [make_optimizer(model, cfg.train, self.accelerator.device, kind) for kind in self.mode.optimizers]

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        multiple = cfg.runtime.pad_to_multiple_of
        attention = attention_format(model)
        self.pin = self.accelerator.device.type == "cuda"  # pinned batches copy to the GPU without blocking
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        lengths = [len(ids) for ids in self.data.train.input_ids] if cfg.train.group_by_length else None
        self.order = EpochShuffleSampler(len(self.data.train), cfg.train.seed, lengths, cfg.train.batch_size)
        positions = getattr(model.config, "max_position_embeddings", None)
        # Training batches carry their example indices too: per-example modes (AdaFlood) use them.
        self.collate = Collator(self.data.train, pad_id, multiple, attention, with_index=True, max_positions=positions)
        self.eval_splits = {
            role: EvalSplit(
                split,
                cfg.train.eval_batch_size,
                Collator(split, pad_id, multiple, attention, with_index=True, max_positions=positions),
                cfg.runtime.num_workers,
                self.pin,
                processes,
                rank,
            )
            for role, split in (("val", self.data.validation), ("test", self.data.test))
            if split is not None
        }
        # The plain module: its state_dict and save_pretrained, whatever wraps it for speed.
        self.raw_model = model
        if cfg.runtime.compile:
            model = torch.compile(model)
        self.model, *self.optimizers = self.accelerator.prepare(model, *optimizers)
        # Evaluation runs each process's own batches through the model without the DDP
        # wrapper (whose forward may talk to the other processes); compiled and
        # autocast as training is.
        self.eval_model = self.accelerator.unwrap_model(self.model, keep_torch_compile=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.weight_decays = [[group["weight_decay"] for group in optimizer.param_groups] for optimizer in self.optimizers]

        train = cfg.train
        self.steps_per_epoch = math.ceil(len(self.data.train) / (train.batch_size * train.grad_accum_steps * processes))
        self.total_steps = self.steps_per_epoch * train.epochs
        self.warmup_steps = int(train.warmup_ratio * self.total_steps)
        # Steps between evaluations, possibly fractional ("0.5 epoch" of 7 steps): the
        # evaluations fall on the first step at or after each multiple of it.
        self.eval_period = train.evaluation_period(self.steps_per_epoch)
        self.interval = _Interval(self.accelerator.device)
        self.progress = Progress()
        self.rows: list[dict[str, Any]] = []
        self.run: RunDir | None = None
        self.trackers: Any = None
        self.checkpoints = checkpoint.BackgroundWriter()
        self.started = time.time()

    # -- run folder -----------------------------------------------------------
    @property
    def columns(self) -> tuple[str, ...]:
        return columns_for(self.data.test is not None)

    def open_new_run(self) -> None:
        if not self.accelerator.is_main_process:
            return
        cfg, train = self.cfg, self.cfg.train
        default = default_run_name(train.mode, train.lr, train.seed, train.b, train.ascent_lr)
        run = RunDir.create(Path(cfg.output.dir), cfg.output.name, default)
        try:
            run.lock()
            experiment = cfg.experiment_dict()
            experiment["output"]["name"] = run.path.name
            # Absolute, like the data paths: the saved config runs again from any folder.
            experiment["output"]["dir"] = str(run.path.parent.resolve())
            run.write_config(experiment, self._meta())
            run.open_metrics(self.columns)
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
                data=self.data.description,
                num_labels=len(self.data.label_names),
                num_train_examples=self.data.counts.get("train", 0),
                num_val_examples=self.data.counts.get("validation", 0),
                num_test_examples=self.data.counts.get("test", 0),
                total_steps=self.total_steps,
                steps_completed=0,
                started_at=now_iso(),
            )
            self._start_trackers(run, experiment)
        except BaseException:
            # A folder that never became a run (a full disk, a signal) is not left
            # behind: it would only block a retry under the same --name.
            run.discard()
            raise
        self.run = run

    def _start_trackers(self, run: RunDir, experiment: dict[str, Any]) -> None:
        """TensorBoard and MLflow, when output.report_to names them (main process only)."""
        if not self.cfg.output.report_to:
            return
        from flood_cli.runs.tracking import Trackers

        self.trackers = Trackers(list(self.cfg.output.report_to), run, self.reporter.warning)
        fields = self.trackers.start(experiment, run.summary, self.rows)
        if fields:
            run.write_summary(**fields)

    def _meta(self) -> dict[str, Any]:
        return {
            "versions": package_versions(),
            "device": str(self.accelerator.device),
            "precision": self.accelerator.mixed_precision,
            "num_processes": self.accelerator.num_processes,
            "started_at": now_iso(),
            "label_names": self.data.label_names,
        }

    def reopen_run(self, run_dir: Path, state: dict[str, Any]) -> None:
        """Continue a stopped run from its last checkpoint (``state``, as loaded)."""
        processes = self.accelerator.num_processes
        if state["num_processes"] != processes:
            raise FloodError(
                f"run {run_dir} was trained by {state['num_processes']} process(es), this resume has {processes}; "
                f"resume it with {state['num_processes']} (batch_size is per process, so the steps would differ)"
            )
        if state["total_steps"] != self.total_steps:
            raise FloodError(
                f"checkpoint of {run_dir} expects {state['total_steps']} steps but the data now gives {self.total_steps}; "
                "the data files changed since the run started, start a new run"
            )
        _check_same_data(run_dir, self.cfg, state.get("data"), self.data.fingerprints())
        try:  # the entries' types were checked on loading; whether they fit the model is checked here
            self.raw_model.load_state_dict(state["model"])
            if len(state["optimizers"]) != len(self.optimizers):
                raise ValueError(f"{len(state['optimizers'])} optimizer state(s) for the mode's {len(self.optimizers)}")
            for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"]):
                optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise UnresumableRun(
                f"checkpoint {checkpoint.last_checkpoint(run_dir)} is damaged (it does not fit the run's model and optimizers: "
                f"{shown(' '.join(str(exc).split()).removeprefix(f'Error(s) in loading state_dict for {type(self.raw_model).__name__}: '), 120)})",
                _start_again(run_dir, _rows_written(run_dir)),
            ) from None
        if self.accelerator.scaler is not None and state.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        own = state["processes"][self.accelerator.process_index]
        self.interval.load_state_dict(own["interval"])
        self.progress = Progress(**state["progress"])
        # Each process's own RNG (dropout); nothing draws from it between here and the
        # first step (the data loaders have generators of their own).
        checkpoint.restore_rng(own["rng"])
        self.started = time.time() - self.progress.elapsed_before
        if self.accelerator.is_main_process:
            run = RunDir(run_dir)
            run.lock()
            self.rows = run.reopen_metrics(self.columns, self.progress.rows_written)
            run.load_summary()
            run.started -= float(run.summary.get("wall_time_s") or 0.0)  # wall time keeps counting
            resumes = run.summary.get("resumed", 0) + 1
            run.write_summary(status="running", error=None, resumed=resumes, resumed_at=now_iso())
            self._start_trackers(run, self.cfg.experiment_dict())
            self.run = run

    def _stop_if_nonfinite(self, train_loss: float) -> None:
        """A nan/inf loss ends the run (on_nonfinite: stop) before anything is saved from it."""
        if not math.isfinite(train_loss):
            first = self.progress.step - self.interval.steps
            raise FloodError(
                f"training loss became {train_loss} between steps {first} and {self.progress.step}; "
                "lower train.lr, use precision fp32/bf16, or set train.on_nonfinite: skip"
            )

    def save_checkpoint(self) -> None:
        """Snapshot the training state to the CPU now, and write it in the background."""
        # Never replace a good checkpoint with weights a non-finite step has spoilt (right
        # after an evaluation the interval is empty: evaluate_and_log has just checked).
        if self.interval.steps:
            self._stop_if_nonfinite(self.interval.read(self.accelerator)["train_loss"])
        processes = self._gather_process_states()
        if self.run is None:
            return
        self.reporter.before_write()
        self.progress.elapsed_before = time.time() - self.started
        payload = checkpoint.snapshot(
            {
                "model": self.raw_model.state_dict(),
                "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
                "processes": processes,
                "num_processes": self.accelerator.num_processes,
                "progress": vars(self.progress),
                "total_steps": self.total_steps,
                "experiment": self.cfg.experiment_dict(),
                "data": self.data.fingerprints(),
            }
        )
        run, step = self.run, self.progress.step
        self.checkpoints.submit(
            checkpoint.last_checkpoint(run.path),
            payload,
            lambda: run.write_summary(steps_completed=step, checkpoint_step=step),
        )

    def _gather_process_states(self) -> list[dict[str, Any]]:
        """What differs between processes, in process order, on the main process: the
        RNG (each draws its own dropout masks) and the figures of its own examples
        since the last evaluation (summed across processes only when read)."""
        state = {"rng": checkpoint.capture_rng(), "interval": self.interval.state_dict()}
        if self.accelerator.num_processes == 1:
            return [state]
        import torch.distributed as dist

        gathered: list[Any] | None = [None] * self.accelerator.num_processes if self.accelerator.is_main_process else None
        dist.gather_object(state, gathered, dst=0)
        return gathered or []

    # -- training ------------------------------------------------------------
    def fit(self) -> RunResult:
        train, progress, reporter = self.cfg.train, self.progress, self.reporter
        reporter.start(self.total_steps, self.steps_per_epoch, train.epochs)
        self.model.train()
        with stop_requests(self.accelerator.num_processes) as stop:
            while progress.epoch < train.epochs:
                # A resumed run starts mid-epoch: the plan of an epoch depends only on
                # (seed, epoch), so the steps already taken are simply passed over.
                for step, micro_batches in self.epoch_steps(progress.epoch, progress.steps_in_epoch):
                    self.train_step(step, micro_batches)
                    progress.step += 1
                    progress.steps_in_epoch += 1
                    self.after_step(stop)
                progress.epoch += 1
                progress.steps_in_epoch = 0
            stop.close()
        self.checkpoints.wait()  # a run is complete once its last checkpoint is on disk
        if self.run is not None:
            self.run.check_intact()
            self.reporter.before_write()
            self.run.write_summary(status="completed", finished_at=now_iso())
            if not self.cfg.output.keep_checkpoint:
                # Only a stopped run needs it; a sweep of BERT-base runs would keep 1.3 GB each.
                checkpoint.remove(self.run.path)
        best = progress.best
        return RunResult(
            run_dir=self.run.path if self.run is not None else Path(self.cfg.output.dir),
            status="completed",
            best_val_loss=best["val_loss"],
            best_epoch=best["epoch"],
            best_step=best["step"],
            rows=self.rows,
            is_main_process=self.accelerator.is_main_process,
        )

    def epoch_steps(self, epoch: int, start: int = 0) -> Iterator[tuple[StepBatches, list[dict[str, torch.Tensor]]]]:
        """The optimizer steps of ``epoch`` from its step ``start`` on: each step's plan
        and this process's micro-batches of it, on the device."""
        train, accelerator = self.cfg.train, self.accelerator
        order = self.order.order(epoch)
        steps = plan_steps(order, train.batch_size, train.grad_accum_steps, accelerator.num_processes, accelerator.process_index)
        steps = steps[start:]
        loader = torch.utils.data.DataLoader(
            list(range(len(self.data.train))),
            batch_sampler=[list(batch) for step in steps for batch in step.micro_batches],
            collate_fn=self.collate,
            num_workers=self.cfg.runtime.num_workers,
            pin_memory=self.pin,
            # Its own generator: iterating a DataLoader draws a seed from the global RNG,
            # which dropout uses too; with its own, a resumed run's draws stay aligned.
            generator=torch.Generator().manual_seed(train.seed),
        )
        batches = iter(loader)
        device = accelerator.device
        for step in steps:
            micro_batches = [next(batches) for _ in step.micro_batches]
            yield step, [{key: value.to(device, non_blocking=True) for key, value in batch.items()} for batch in micro_batches]

    def train_step(self, step_plan: StepBatches, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step over this process's micro-batches, made as the mode says."""
        step = self.progress.step
        scale = lr_scale(step, self.total_steps, self.warmup_steps, self.cfg.train.schedule)
        tools = _StepTools(self, step_plan, micro_batches, step, scale)
        figures = self.mode.step(tools)
        if tools.skipped:
            self.interval.skipped += 1
            return

        interval = self.interval
        interval.loss_sum += tools.first_loss_sum
        interval.correct += tools.first_correct
        interval.objective_sum += figures.objective.detach() * step_plan.local_examples
        interval.ascent += figures.ascent
        interval.ascent_of += figures.ascent_of
        interval.examples += step_plan.local_examples
        interval.steps += 1

        # The running mean since the last evaluation (the CSV's train_loss of the row to
        # come), read with one host sync every `live_loss_every` steps, and only for a
        # reporter that shows it.
        every = self.reporter.live_loss_every
        train_loss = (interval.loss_sum / max(interval.examples, 1)).item() if every and (step + 1) % every == 0 else None
        self.reporter.step(step + 1, (step + 1) / self.steps_per_epoch, train_loss)

    def _scale_gradients(self, sign: Any, optimizer: Any) -> None:
        max_norm = self.cfg.train.max_grad_norm
        if sign is None and max_norm is None:
            return
        if max_norm is not None:
            # fp16: clip the true gradients (no-op otherwise). Only this step's optimizer:
            # both of mode alternate hold the same parameters, which must be unscaled once.
            self.accelerator.unscale_gradients(optimizer=optimizer)
        clip_and_sign([p.grad for p in self.params if p.grad is not None], sign, max_norm)


    def after_step(self, stop: StopRequest) -> None:
        step, output = self.progress.step, self.cfg.output
        self.checkpoints.poll()
        evaluated = step == self.total_steps or step // self.eval_period > (step - 1) // self.eval_period
        if evaluated:
            self.evaluate_and_log()
        stop_signal = stop.agreed()
        if evaluated or stop_signal or (output.checkpoint_every and step % output.checkpoint_every == 0):
            self.save_checkpoint()
        if stop_signal:
            self.checkpoints.wait()  # "checkpoint written" must be true when it is said
            name = signal.Signals(stop_signal).name
            if self.run is not None:
                self.reporter.before_write()
                self.run.write_summary(status="interrupted", error=f"stopped by {name}", finished_at=now_iso())
            raise RunInterrupted(self.run.path if self.run else None, step, name, report=self.accelerator.is_main_process)

    def evaluate_and_log(self) -> None:
        progress = self.progress
        figures = self.interval.read(self.accelerator)
        self._stop_if_nonfinite(figures["train_loss"])
        self.interval.reset()
        val = self.evaluate("val")
        row: dict[str, Any] = {
            "epoch": round(progress.step / self.steps_per_epoch, 4),
            "step": progress.step,
            **figures,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "best_val_loss": min(progress.best["val_loss"], val["loss"]),
            # The schedule's (descent) rate, whatever this step's mode.
            "lr": self.cfg.train.lr * lr_scale(progress.step - 1, self.total_steps, self.warmup_steps, self.cfg.train.schedule),
            "val_loss_top10_share": val["top10_share"],
            "val_ece": val["ece"],
            "val_confidence": val["confidence"],
            "val_confident_wrong": val["confident_wrong"],
            "elapsed_s": round(time.time() - self.started, 3),
        }
        if "test" in self.eval_splits:
            test = self.evaluate("test")
            row["test_loss"], row["test_accuracy"] = test["loss"], test["accuracy"]
        row = {key: row[key] for key in self.columns}
        self.reporter.before_write()

        best = progress.best
        if row["val_loss"] < best["val_loss"]:
            best.update(val_loss=row["val_loss"], epoch=row["epoch"], step=progress.step, val_accuracy=row["val_accuracy"])
            if self.cfg.output.save_best_model:
                self._save_best()
        if row["val_accuracy"] > progress.best_accuracy["val_accuracy"]:
            progress.best_accuracy.update(val_accuracy=row["val_accuracy"], epoch=row["epoch"], step=progress.step)
        self.rows.append(row)
        progress.rows_written += 1
        if self.run is not None:
            self.run.append_metrics(row)
            if self.trackers is not None:
                self.trackers.log_row(row, progress.step)
            self.run.write_summary(
                best_val_loss=best["val_loss"],
                best_epoch=best["epoch"],
                best_step=best["step"],
                val_accuracy_at_best=best["val_accuracy"],
                best_val_accuracy=progress.best_accuracy["val_accuracy"],
                best_val_accuracy_epoch=progress.best_accuracy["epoch"],
                best_val_accuracy_step=progress.best_accuracy["step"],
                final_val_loss=row["val_loss"],
                final_val_accuracy=row["val_accuracy"],
                steps_completed=progress.step,
            )
        self.reporter.evaluation(row)

    def evaluate(self, role: str) -> dict[str, float]:
        """Figures of the current model over the whole split ``role`` (val or test)."""
        return evaluate(self.eval_model, self.eval_splits[role], self.accelerator)

    def _save_best(self) -> None:
        """Save the best model next to the metrics, replacing the previous best atomically."""
        self.accelerator.wait_for_everyone()
        if self.run is None:
            return

        def write(folder: Path) -> None:
            self.raw_model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        self.run.replace_best_model(write)


# ---------------------------------------------------------------------------
# Entry points


def _fit_and_record(trainer: Trainer) -> RunResult:
    """Run the loop; whatever stops it, the summary says so and the CSV rows stay."""
    try:
        return trainer.fit()
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        trainer.checkpoints.settle_quietly()
        if trainer.run is not None:
            trainer.run.write_summary(status="interrupted", error="interrupted", finished_at=now_iso())
        raise
    except BaseException as exc:
        trainer.checkpoints.settle_quietly()  # the last good checkpoint is recorded as such
        if trainer.run is not None:
            try:
                status = getattr(exc, "run_status", "failed")  # e.g. "pruned" by a sweep's pruner
                trainer.run.write_summary(status=status, error=f"{type(exc).__name__}: {exc}", finished_at=now_iso())
            except OSError:
                pass  # a full disk: the original error is the one to report
        raise
    finally:
        trainer.checkpoints.settle_quietly()  # the run folder stays locked until it is written
        if trainer.run is not None:
            if trainer.trackers is not None:
                trainer.trackers.finish(trainer.run.summary, trainer.rows)  # completed, failed or interrupted
            trainer.run.close()


def run_training(cfg: Config, reporter: Reporter | None = None) -> RunResult:
    """Train one run as configured and leave its folder behind; return the best figures."""
    # Before any expensive work (the folder itself is claimed atomically later).
    check_writable(Path(cfg.output.dir))
    if cfg.output.report_to:
        from flood_cli.runs.tracking import check_trackers

        check_trackers(list(cfg.output.report_to), Path(cfg.output.dir))
    if cfg.output.name is not None and (Path(cfg.output.dir) / cfg.output.name).exists():
        raise RunDir.name_taken(Path(cfg.output.dir) / cfg.output.name)
    reporter = reporter or NullReporter()
    trainer = Trainer(cfg, reporter, _mode_levels(cfg, reporter))
    trainer.open_new_run()
    return _fit_and_record(trainer)


def _mode_levels(cfg: Config, reporter: Reporter) -> torch.Tensor | None:
    """Per-example flood levels, for the one mode that needs runs of its own first."""
    if cfg.train.mode != "adaflood":
        return None
    from flood_cli.train import adaflood

    return adaflood.levels_for(cfg, reporter)


def resume_training(run_dir: Path, reporter: Reporter | None = None) -> RunResult:
    """Continue a stopped run (killed, interrupted, failed) from its last checkpoint."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise FloodError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder that flood train printed")
    summary = RunDir(run_dir).load_summary()
    if summary.get("status") == "completed":
        raise FloodError(f"run {run_dir} already completed; nothing to resume")
    path = checkpoint.last_checkpoint(run_dir)
    rows = _rows_written(run_dir)
    if not path.exists():
        if rows:
            error = summary.get("error")
            raise UnresumableRun(
                f"run {run_dir} has no checkpoint although metrics.csv has rows (writing it failed"
                f"{': ' + str(error)[:120] if error else ''})",
                _start_again(run_dir, rows),
            )
        raise FloodError(f"run {run_dir} has no checkpoint (it stopped before its first evaluation); start it again")
    try:
        # Before anything is built: a checkpoint that cannot be used is said at once.
        state = checkpoint.load(path)
    except checkpoint.UnreadableCheckpoint as exc:
        raise UnresumableRun(str(exc), _start_again(run_dir, rows)) from None
    cfg = load_config(config_path, new_run=False)
    _check_same_experiment(run_dir, state["experiment"], cfg.experiment_dict())
    if cfg.output.report_to:  # before the data and the model, and before the summary says "running"
        from flood_cli.runs.tracking import check_trackers

        check_trackers(list(cfg.output.report_to), run_dir.parent, run_dir)
    reporter = reporter or NullReporter()
    trainer = Trainer(cfg, reporter, _mode_levels(cfg, reporter))
    trainer.reopen_run(run_dir, state)
    return _fit_and_record(trainer)


def _rows_written(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return read_metrics(run_dir / METRICS_FILE)
    except (OSError, ValueError, csv.Error):
        return []


def _start_again(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    """What to do when a run cannot be resumed: its rows stay, the training restarts."""
    kept = ""
    if rows:
        last = rows[-1].get("step")
        kept = f"metrics.csv keeps its {len(rows)} row(s)" + (f" (to step {int(last)})" if last is not None else "") + " but "
    return (
        f"{kept}training cannot continue from them: start the run again under a new name, "
        f"e.g. flood train --config {run_dir / CONFIG_FILE} --name NEW"
    )


# Settings that say how or where a run goes, not what it computes: they may change
# between a checkpoint and its resume (the run folder moved, another machine).
RESUMABLE_CHANGES = ("output.", "runtime.device", "runtime.num_workers")


def _check_same_experiment(run_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse a resume whose config.yaml was edited since the checkpoint: the later rows
    would belong to another experiment than the earlier ones and the summary."""

    changed = [change for change in changed_keys(saved, now) if not change[0].startswith(RESUMABLE_CHANGES)]
    if changed:
        raise FloodError(
            f"{run_dir / CONFIG_FILE} was edited since the checkpoint: {changes_text(changed, _short, 5)}; the rows so far were trained "
            "with the checkpoint's values: put them back to resume, or start a new run with the new ones"
        )


def _check_same_data(run_dir: Path, cfg: Config, saved: dict[str, str] | None, now: dict[str, str]) -> None:
    """Refuse a resume whose data changed since the checkpoint (a file rewritten, even at
    the same size and time, another tokenizer): the later rows would be trained on
    other examples than the earlier ones. Checkpoints from before 2026-12-03 hold no
    fingerprint and are not checked."""
    if saved is None:
        return
    changed = [role for role in ("train", "validation", "test") if saved.get(role) != now.get(role)]
    if not changed:
        return
    data = cfg.data

    def source(role: str) -> str:
        path = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}[role]
        if path is not None:
            return f"{role} data ({path})"
        if role == "validation" and data.validation_file is None:
            return f"validation data (split off {data.train_file or data.dataset})"
        return f"{role} data ({data.dataset})"

    raise FloodError(
        f"the {', '.join(source(role) for role in changed)} of run {run_dir} changed since its checkpoint "
        "(other token ids or labels); the rows so far were trained on the old data: put it back to resume, "
        f"or start a new run on the new data: flood train --config {run_dir / CONFIG_FILE} --name NEW"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
