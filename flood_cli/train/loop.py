"""The training loop, on 🤗 Accelerate: fit -> train_step -> after_step -> evaluate_and_log,
and the checkpoint a run resumes from.

Reads top to bottom like nanoGPT's train.py. Around it: setup (accelerator, optimizers,
data and model), evaluate (figures over a split), stop (SIGINT/SIGTERM agreed between
processes), recorder (metrics.csv rows, summary.json, trackers) and entry (run_training,
resume_training). The mode (baseline, flooding, alternate)
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

import math
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flood_cli.config.schema import Config
from flood_cli.core.errors import FloodError, RunInterrupted, UnresumableRun, shown
from flood_cli.core.reporting import Reporter
from flood_cli.data.batches import StepBatches, plan_steps
from flood_cli.data.prepare import INDEX, LABELS, PreparedData
from flood_cli.runs.columns import columns_for
from flood_cli.train import checkpoint, setup
from flood_cli.train.evaluate import evaluate, step_loss_sum
from flood_cli.train.objectives import Mode, Pass, clip_and_sign, lr_scale
from flood_cli.train.recorder import RunRecorder, rows_written, start_again
from flood_cli.train.setup import make_accelerator
from flood_cli.train.stop import EarlyStopping, StopRequest, stop_requests


@dataclass
class RunResult:
    run_dir: Path
    status: str
    best_val_loss: float
    best_epoch: float
    best_step: int
    rows: list[dict[str, Any]]
    is_main_process: bool = True
    stopped_at_step: int | None = None  # early stopping ended it there
    stop_reason: str = ""  # what early stopping saw, for the console: "val_loss did not improve ..."


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
    loss_sum: torch.Tensor
    objective_sum: torch.Tensor
    correct: torch.Tensor
    ascent: torch.Tensor

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
    # EarlyStopping.state() after the last evaluation (None without train.early_stopping).
    early_stopping: dict[str, Any] | None = None


class Trainer:
    def __init__(self, cfg: Config, reporter: Reporter, levels: torch.Tensor | None = None):
        self.cfg = cfg
        self.reporter = reporter
        self.accelerator = make_accelerator(cfg.runtime)
        # A CPU run's thread count (one per core it may use; see setup.cpu_threads),
        # said when training starts where the reporter asks (flood train's: on stdout).
        self.threads_line = setup.set_cpu_threads() if self.accelerator.device.type == "cpu" else None
        pieces = setup.build(cfg, reporter, self.accelerator, levels)
        self.tokenizer = pieces.tokenizer
        self.data: PreparedData = pieces.data
        self.mode: Mode = pieces.mode
        self.pin, self.order, self.collate, self.eval_splits = pieces.pin, pieces.order, pieces.collate, pieces.eval_splits
        model, optimizers = pieces.model, pieces.optimizers
        # The plain module: its state_dict and save_pretrained, whatever wraps it for speed.
        self.raw_model = model
        compiled = torch.compile(model) if cfg.runtime.compile else model
        self.model, *self.optimizers = self.accelerator.prepare(compiled, *optimizers)
        # Evaluation runs each process's own batches through the model without the DDP
        # wrapper (whose forward may talk to the other processes); compiled and
        # autocast as training is.
        self.eval_model = self.accelerator.unwrap_model(self.model, keep_torch_compile=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.weight_decays = [[group["weight_decay"] for group in optimizer.param_groups] for optimizer in self.optimizers]

        train, processes = cfg.train, self.accelerator.num_processes
        self.steps_per_epoch = math.ceil(len(self.data.train) / (train.batch_size * train.grad_accum_steps * processes))
        self.total_steps = self.steps_per_epoch * train.epochs
        self.warmup_steps = int(train.warmup_ratio * self.total_steps)
        # Steps between evaluations, possibly fractional ("0.5 epoch" of 7 steps): the
        # evaluations fall on the first step at or after each multiple of it.
        self.eval_period = train.evaluation_period(self.steps_per_epoch)
        self.interval = _Interval(self.accelerator.device)
        self.progress = Progress()
        self.recorder = RunRecorder(cfg, reporter)  # no run folder on the other processes
        self.checkpoints = checkpoint.BackgroundWriter()
        self.started = time.time()
        self.early_stopping = self._early_stopping(None)

    def _stop_reason(self) -> str:
        config = self.cfg.train.early_stopping
        if config is None:
            return ""
        by = f" by more than {config.min_delta:g}" if config.min_delta else ""
        return f"val_loss did not improve{by} for {config.patience} evaluations (train.early_stopping)"

    def _early_stopping(self, state: dict[str, Any] | None) -> EarlyStopping | None:
        config = self.cfg.train.early_stopping
        return EarlyStopping(config.patience, config.min_delta, state) if config is not None else None

    # -- run folder -----------------------------------------------------------
    @property
    def columns(self) -> tuple[str, ...]:
        return columns_for(self.data.test is not None, self.cfg.train.metrics)

    def open_new_run(self) -> None:
        if self.accelerator.is_main_process:
            meta = lambda: setup.run_meta(self.accelerator, self.data)  # noqa: E731
            self.recorder = RunRecorder.create(self.cfg, self.reporter, self.columns, meta, self.data, self.total_steps)

    def reopen_run(self, run_dir: Path, state: dict[str, Any]) -> None:
        """Continue a stopped run from its last checkpoint (``state``, as loaded, checked
        by entry.resume_training against this run's set-up)."""
        try:  # the entries' types were checked on loading; whether they fit the model is checked here
            self.raw_model.load_state_dict(state["model"])
            if len(state["optimizers"]) != len(self.optimizers):
                raise ValueError(f"{len(state['optimizers'])} optimizer state(s) for the mode's {len(self.optimizers)}")
            for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"], strict=True):
                optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise UnresumableRun(
                f"checkpoint {checkpoint.last_checkpoint(run_dir)} is damaged (it does not fit the run's model and optimizers: "
                f"{shown(' '.join(str(exc).split()).removeprefix(f'Error(s) in loading state_dict for {type(self.raw_model).__name__}: '), 120)})",
                start_again(run_dir, rows_written(run_dir)),
            ) from None
        if self.accelerator.scaler is not None and state.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        own = state["processes"][self.accelerator.process_index]
        self.interval.load_state_dict(own["interval"])
        self.progress = Progress(**state["progress"])
        self.early_stopping = self._early_stopping(self.progress.early_stopping)
        # Each process's own RNG (dropout); nothing draws from it between here and the
        # first step (the data loaders have generators of their own).
        checkpoint.restore_rng(own["rng"])
        self.started = time.time() - self.progress.elapsed_before
        if self.accelerator.is_main_process:
            self.recorder = RunRecorder.reopen(self.cfg, self.reporter, run_dir, self.columns, self.progress.rows_written)

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
        run = self.recorder.run
        if run is None:
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
        step = self.progress.step
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
        say_threads = getattr(reporter, "say_threads", None)
        if self.threads_line and self.accelerator.is_main_process and say_threads is not None:
            say_threads(self.threads_line)
        reporter.start(self.total_steps, self.steps_per_epoch, train.epochs)
        self.model.train()
        with stop_requests(self.accelerator.num_processes) as stop:
            # Early stopping ends the loop at the same step on every process (each one
            # decides from the same val_loss); a resumed run that had stopped does no step.
            while progress.epoch < train.epochs and self.stopped_at() is None:
                # A resumed run starts mid-epoch: the plan of an epoch depends only on
                # (seed, epoch), so the steps already taken are simply passed over.
                for step, micro_batches in self.epoch_steps(progress.epoch, progress.steps_in_epoch):
                    self.train_step(step, micro_batches)
                    progress.step += 1
                    progress.steps_in_epoch += 1
                    self.after_step(stop)
                    if self.stopped_at() is not None:
                        break
                else:
                    progress.epoch += 1
                    progress.steps_in_epoch = 0
            stop.close()
        self.checkpoints.wait()  # a run is complete once its last checkpoint is on disk
        run = self.recorder.run
        stopped_at = self.stopped_at()
        if run is not None:
            early = {} if self.early_stopping is None else {"stopped_early": stopped_at is not None}
            self.recorder.completed(**early, **({"stopped_at_step": stopped_at} if stopped_at is not None else {}))
            if not self.cfg.output.keep_checkpoint:
                # Only a stopped run needs it; a sweep of BERT-base runs would keep 1.3 GB each.
                checkpoint.remove(run.path)
        best = progress.best
        return RunResult(
            run_dir=run.path if run is not None else Path(self.cfg.output.dir),
            status="completed",
            best_val_loss=best["val_loss"],
            best_epoch=best["epoch"],
            best_step=best["step"],
            rows=self.recorder.rows,
            is_main_process=self.accelerator.is_main_process,
            stopped_at_step=stopped_at,
            stop_reason=self._stop_reason(),
        )

    def stopped_at(self) -> int | None:
        """The step early stopping ended the run at, or None."""
        return self.early_stopping.stopped_at if self.early_stopping is not None else None

    def epoch_steps(self, epoch: int, start: int = 0) -> Iterator[tuple[StepBatches, list[dict[str, torch.Tensor]]]]:
        """The optimizer steps of ``epoch`` from its step ``start`` on: each step's plan
        and this process's micro-batches of it, on the device."""
        train, accelerator = self.cfg.train, self.accelerator
        order = self.order.order(epoch)
        steps = plan_steps(order, train.batch_size, train.grad_accum_steps, accelerator.num_processes, accelerator.process_index)
        steps = steps[start:]
        loader: torch.utils.data.DataLoader[int] = torch.utils.data.DataLoader(
            list(range(len(self.data.train))),  # type: ignore[arg-type]  # torch's stub wants a Dataset; a list is a map-style one
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
            self.recorder.stopped_by(name)
            run = self.recorder.run
            raise RunInterrupted(run.path if run else None, step, name, report=self.accelerator.is_main_process)

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
        row.update(optional_metrics("val", val, self.cfg.train.metrics))
        if "test" in self.eval_splits:
            test = self.evaluate("test")
            row["test_loss"], row["test_accuracy"] = test["loss"], test["accuracy"]
            row.update(optional_metrics("test", test, self.cfg.train.metrics))
        row = {key: row[key] for key in self.columns}
        self.reporter.before_write()

        best = progress.best
        if row["val_loss"] < best["val_loss"]:
            best.update(val_loss=row["val_loss"], epoch=row["epoch"], step=progress.step, val_accuracy=row["val_accuracy"])
            if self.cfg.output.save_best_model:
                self._save_best()
        if row["val_accuracy"] > progress.best_accuracy["val_accuracy"]:
            progress.best_accuracy.update(val_accuracy=row["val_accuracy"], epoch=row["epoch"], step=progress.step)
        if self.early_stopping is not None:  # saved with the checkpoint that follows this evaluation
            self.early_stopping.update(row["val_loss"], progress.step)
            progress.early_stopping = self.early_stopping.state()
        progress.rows_written += 1
        self.recorder.record(row, progress)
        self.reporter.evaluation(row)

    def evaluate(self, role: str) -> dict[str, float]:
        """Figures of the current model over the whole split ``role`` (val or test)."""
        return evaluate(self.eval_model, self.eval_splits[role], self.accelerator, self.cfg.train.metrics, len(self.data.label_names))

    def _save_best(self) -> None:
        """Save the best model next to the metrics, replacing the previous best atomically."""
        self.accelerator.wait_for_everyone()
        if self.recorder.run is None:
            return

        def write(folder: Path) -> None:
            try:
                self.raw_model.save_pretrained(folder)
                self.tokenizer.save_pretrained(folder)
            except Exception as error:
                # safetensors reports a failed write (a full disk, a file-size limit) as
                # SafetensorError "... (os error 28)"; the OSError behind it is the one to tell.
                number = os_error_number(error)
                if number is None:
                    raise
                raise OSError(number, os.strerror(number), str(folder)) from None

        self.recorder.run.replace_best_model(write)


def os_error_number(error: BaseException) -> int | None:
    """The errno of an OSError, or of one a library reported in its message ("os error 27")."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found else None


def optional_metrics(prefix: str, figures: dict[str, float], names: list[str]) -> dict[str, float | None]:
    """The configured metrics of an evaluation as its ``<prefix>_<name>`` cells; an
    undefined one (nan) is an empty cell."""
    return {f"{prefix}_{name}": None if math.isnan(figures[name]) else figures[name] for name in names}
