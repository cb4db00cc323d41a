"""The training modes as small pure pieces: each owns its optimizer step's objective.

A mode is built once and the loop calls ``mode.step(tools)`` for every optimizer step.
The mode decides how the step's gradient is made, with what the loop offers
(``StepTools``):

* ``tools.forward_backward(per_example=None, same_masks=False)``: one pass over the
  step's micro-batches (every process). The gradient is that of the step's mean loss,
  or, with ``per_example(losses, index) -> (objective, ascending)``, of the mean of a
  per-example objective (weights or signs per example). It returns the step's mean
  loss and objective over every process, and how many of its examples ascended, as
  device tensors.
  ``same_masks`` replays the first pass's dropout masks.
* ``tools.update(optimizer, lr, sign=None, decay=1.0)``: clip, flip the gradient by
  ``sign`` (a float or a device tensor), step that optimizer at that rate with
  ``decay`` times its weight decay (the decay is never flipped), clear the gradients.
* ``tools.take_grads()``, ``tools.grads()``, ``tools.shift_params(direction, factor)``
  and ``tools.restore_params(saved)``: for modes that make two passes (the
  gradient-norm penalty evaluates the gradient at a perturbed point).
* ``tools.step`` (0-based) and ``tools.scale`` (the schedule's factor).

``step`` returns what to log: the objective the optimizer saw, and what ascended out of
what: a whole-step mode says 1 (or 0) of 1 step, a per-example mode the number of the
step's examples that ascended out of the step's examples, so that ``flood_active`` is
the share of steps, or of examples, since the last row, however ragged the steps. Nothing here reads a tensor on the host, so no mode adds a
host-device sync.

Working on the gradient keeps flooding exact under gradient accumulation and data
parallelism: ``d/dθ (|L − b| + b) = sign(L − b) · ∇L``, where ``L`` must be the mean
loss of the *whole* optimizer step, known only once every micro-batch has been through
backward. Per-example objectives (iFlood, AdaFlood) are exact by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

Sign = float | torch.Tensor
# (per-example losses, example indices) -> (per-example objective, per-example "ascends")
PerExample = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Pass:
    """One forward/backward pass over the step: its mean loss and objective over every
    process, how many of its examples ascended (per-example objectives; 0 otherwise),
    and its example count over every process."""

    loss: torch.Tensor
    objective: torch.Tensor
    ascending: float | torch.Tensor
    examples: int


@dataclass
class StepFigures:
    """What the CSV logs of a step: the objective the optimizer followed, and ``ascent``
    of ``ascent_of`` ascended (1 of 1 step for a flipped step; k of n examples)."""

    objective: torch.Tensor
    ascent: float | torch.Tensor
    ascent_of: float = 1.0


class StepTools(Protocol):
    step: int
    scale: float

    def forward_backward(self, per_example: PerExample | None = None, same_masks: bool = False) -> Pass: ...
    def update(self, optimizer: int, lr: float, sign: Sign | None = None, decay: float = 1.0) -> None: ...
    def take_grads(self) -> list[torch.Tensor]: ...
    def grads(self) -> list[torch.Tensor]: ...
    def shift_params(self, direction: list[torch.Tensor], factor: Sign) -> list[torch.Tensor]: ...
    def restore_params(self, saved: list[torch.Tensor]) -> None: ...


# ---------------------------------------------------------------------------
# Formulas


def flood(loss: torch.Tensor, flood_level: float | torch.Tensor) -> torch.Tensor:
    """The flooded objective of Ishida et al. (2020): ``|L − b| + b``."""
    return (loss - flood_level).abs() + flood_level


def flood_sign(loss: torch.Tensor, flood_level: float) -> torch.Tensor:
    """``+1`` where ``L ≥ b`` (descent), ``-1`` where ``L < b`` (ascent); stays on the device."""
    return torch.where(loss < flood_level, -1.0, 1.0).to(loss.dtype)


def flood_per_example(losses: torch.Tensor, levels: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``|ℓ_i − b_i| + b_i`` per example, written so that its gradient is ``sign(ℓ_i − b_i)
    ∇ℓ_i`` with +1 at ``ℓ_i = b_i`` (flooding's convention); and which examples ascend."""
    below = losses < levels
    return torch.where(below, 2 * levels - losses, losses), below


def adaflood_levels(held_out_losses: torch.Tensor, gamma: float) -> torch.Tensor:
    """AdaFlood's per-example flood level (Bae et al., 2024):
    ``θ_i = −log((1 − γ)·exp(−ℓ_aux,i) + γ)``; γ = 1 gives 0 (plain training), γ = 0 the
    held-out loss itself."""
    return -torch.log((1.0 - gamma) * torch.exp(-held_out_losses) + gamma)


def lr_scale(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


# ---------------------------------------------------------------------------
# The modes


@dataclass(frozen=True)
class Baseline:
    """Plain fine-tuning: minimise the mean cross-entropy."""

    lr: float
    optimizers = ("adamw",)
    two_pass = False

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> Baseline:
        return cls(train.lr)

    def learning_rate(self, step: int, scale: float) -> float:
        return self.lr * scale

    def gradient_sign(self, step: int, step_loss: torch.Tensor) -> Sign | None:
        return None

    def step(self, tools: StepTools) -> StepFigures:
        done = tools.forward_backward()
        tools.update(0, self.learning_rate(tools.step, tools.scale))
        return StepFigures(done.loss, 0.0)


@dataclass(frozen=True)
class Flooding:
    """Minimise ``|L − b| + b`` on the step's mean loss: descent above the flood level,
    ascent below it (Ishida et al., 2020)."""

    lr: float
    flood_level: float
    optimizers = ("adamw",)
    two_pass = False

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> Flooding:
        return cls(train.lr, train.b)

    def gradient_sign(self, step: int, step_loss: torch.Tensor) -> Sign | None:
        return flood_sign(step_loss, self.flood_level)

    def objective(self, step: int, step_loss: torch.Tensor, sign: Sign | None) -> torch.Tensor:
        return flood(step_loss, self.flood_level)

    def step(self, tools: StepTools) -> StepFigures:
        done = tools.forward_backward()
        # The flip rides on the clipping factor: no extra pass over the gradients.
        sign = self.gradient_sign(tools.step, done.loss)
        tools.update(0, self.lr * tools.scale, sign)
        return StepFigures(flood(done.loss, self.flood_level), is_ascent(sign))


class _PerExampleFlood:
    """One pass of a per-example objective (``per_example``), one descent step."""

    lr: float
    optimizers = ("adamw",)
    two_pass = False

    def step(self, tools: StepTools) -> StepFigures:
        done = tools.forward_backward(self.per_example)  # type: ignore[attr-defined]
        tools.update(0, self.lr * tools.scale)
        return StepFigures(done.objective, done.ascending, done.examples)


@dataclass(frozen=True)
class IFlood(_PerExampleFlood):
    """Minimise ``mean_i(|ℓ_i − b| + b)`` (Xie et al., ICLR 2022): each example ascends
    once its own loss is under ``b``."""

    lr: float
    flood_level: float

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> IFlood:
        return cls(train.lr, train.b)

    def per_example(self, losses: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flood_per_example(losses, self.flood_level)


@dataclass(frozen=True)
class AdaFlood(_PerExampleFlood):
    """Minimise ``mean_i(|ℓ_i − θ_i| + θ_i)`` with each example's own flood level
    ``θ_i`` from its loss under auxiliary models that never saw it (Bae et al., 2024).
    ``levels`` holds θ for every training example, on the training device."""

    lr: float
    levels: torch.Tensor

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> AdaFlood:
        assert levels is not None, "built by flood_cli.train.adaflood before the mode"
        return cls(train.lr, levels)

    def per_example(self, losses: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flood_per_example(losses, self.levels[index])


@dataclass(frozen=True)
class Alternate:
    """Even optimizer steps descend at ``lr``, odd ones ascend at ``ascent_lr``, each on
    its own batch.

    ``ascent_optimizer`` says how an ascent step meets AdamW (see the README):

    * ``separate`` (default): ascent steps go through a second AdamW with
      ``maximize=True`` and moments of their own. Each optimizer averages gradients of
      one sign, so descent keeps Adam's usual step size.
    * ``shared``: the gradient is negated and goes through the descent optimizer, whose
      first moment then averages ``g`` and ``-g`` from alternate steps: it nearly
      cancels, and training barely moves (measured: the tiny default stays at the
      majority class for 6 epochs with ascent_lr = lr / 10).

    The reported objective is the signed loss: ``L`` on descent steps, ``-L`` on ascent.
    """

    lr: float
    ascent_lr: float
    ascent_optimizer: str = "separate"
    two_pass = False

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> Alternate:
        return cls(train.lr, train.ascent_lr, train.ascent_optimizer)

    @property
    def optimizers(self) -> tuple[str, ...]:
        return ("adamw", "adamw_ascent") if self.ascent_optimizer == "separate" else ("adamw",)

    @staticmethod
    def is_ascent(step: int) -> bool:
        return step % 2 == 1

    def learning_rate(self, step: int, scale: float) -> float:
        return (self.ascent_lr if self.is_ascent(step) else self.lr) * scale

    def gradient_sign(self, step: int, step_loss: torch.Tensor) -> Sign | None:
        return -1.0 if self.is_ascent(step) and self.ascent_optimizer == "shared" else None

    def optimizer_index(self, step: int) -> int:
        return 1 if self.is_ascent(step) and self.ascent_optimizer == "separate" else 0

    def ascent(self, step: int, sign: Sign | None) -> float | torch.Tensor:
        return 1.0 if self.is_ascent(step) else 0.0

    def objective(self, step: int, step_loss: torch.Tensor, sign: Sign | None) -> torch.Tensor:
        return -step_loss if self.is_ascent(step) else step_loss

    def step(self, tools: StepTools) -> StepFigures:
        step = tools.step
        done = tools.forward_backward()
        tools.update(self.optimizer_index(step), self.learning_rate(step, tools.scale), self.gradient_sign(step, done.loss))
        return StepFigures(self.objective(step, done.loss, None), self.ascent(step, None))


@dataclass(frozen=True)
class Backstitch:
    """Kaldi's backstitch (Wang, Povey et al., Interspeech 2017), as nnet3 does it: on
    every ``interval``-th mini-batch, a step of ``−α·η`` (up the loss), then, on the
    *same* mini-batch with the same dropout masks, a recomputed gradient and a step of
    ``(1 + α)·η``; other mini-batches take one plain step. Plain SGD without momentum,
    as Kaldi asserts. Weight decay (L2) is applied in the second half only, at
    ``wd / (1 + α)``, so a backstitch step decays the weights by ``η·wd`` like a plain
    step (Kaldi's nnet3 handles its L2 so). Two passes on its steps."""

    lr: float
    scale_alpha: float = 0.3
    interval: int = 1
    optimizers = ("sgd",)
    two_pass = True

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> Backstitch:
        return cls(train.lr, train.backstitch.scale, train.backstitch.interval)

    def step(self, tools: StepTools) -> StepFigures:
        rate = self.lr * tools.scale
        first = tools.forward_backward()
        if tools.step % self.interval:
            tools.update(0, rate)
            return StepFigures(first.loss, 0.0)
        # The backward half, up the loss, carries no L2; the forward half carries all of
        # it, scaled by 1 / (1 + α) as Kaldi does: the net decay of the pair is η·wd, as
        # one plain SGD step of the control (not (1 + 2α)·η·wd, L2 in both halves).
        tools.update(0, self.scale_alpha * rate, sign=-1.0, decay=0.0)
        tools.forward_backward(same_masks=True)
        tools.update(0, (1.0 + self.scale_alpha) * rate, decay=1.0 / (1.0 + self.scale_alpha))
        return StepFigures(first.loss, 1.0)


@dataclass(frozen=True)
class GradNorm:
    """Minimise ``L + λ‖∇L‖`` (Zhao et al., ICML 2022) by the paper's finite difference:
    the step follows ``(1 − α)·∇L(θ) + α·∇L(θ + r·g/‖g‖)`` with ``g = ∇L(θ)`` and
    ``α = λ / r`` (α = 1 is SAM). Two passes per step, the second with the first's
    dropout masks; the logged objective is ``L + α·r·‖g‖``."""

    lr: float
    r: float = 0.1
    alpha: float = 0.8
    optimizers = ("adamw",)
    two_pass = True

    @classmethod
    def from_train(cls, train: Any, levels: torch.Tensor | None) -> GradNorm:
        return cls(train.lr, train.gradnorm.r, train.gradnorm.alpha)

    def step(self, tools: StepTools) -> StepFigures:
        first = tools.forward_backward()
        gradient = tools.take_grads()  # ∇L(θ), all processes (after DDP's all-reduce)
        norm = global_norm(gradient)
        saved = tools.shift_params(gradient, self.r / (norm + 1e-12))
        tools.forward_backward(same_masks=True)  # ∇L(θ + r·g/‖g‖)
        tools.restore_params(saved)
        grads = tools.grads()
        torch._foreach_mul_(grads, self.alpha)
        torch._foreach_add_(grads, gradient, alpha=1.0 - self.alpha)
        tools.update(0, self.lr * tools.scale)
        return StepFigures(first.loss + self.alpha * self.r * norm, 0.0)


Mode = Baseline | Flooding | IFlood | AdaFlood | Alternate | Backstitch | GradNorm


# Each mode of flood_cli.core.modes by name (a test checks that both name the same modes).
OBJECTIVES: dict[str, type[Mode]] = {
    "baseline": Baseline,
    "flooding": Flooding,
    "iflood": IFlood,
    "adaflood": AdaFlood,
    "alternate": Alternate,
    "backstitch": Backstitch,
    "gradnorm": GradNorm,
}


def make_mode(train: Any, levels: torch.Tensor | None = None) -> Mode:
    """Build the mode once from the train section; the loop never asks which mode it runs."""
    objective = OBJECTIVES.get(train.mode)
    if objective is None:
        raise ValueError(f"unknown mode {train.mode!r}")
    return objective.from_train(train, levels)


# ---------------------------------------------------------------------------
# Gradient arithmetic


def apply_sign(grads: list[torch.Tensor], sign: Sign | None) -> None:
    """Multiply every gradient in place by ``sign`` (no host sync for tensor signs)."""
    if sign is None or not grads:
        return
    torch._foreach_mul_(grads, sign)


def clip_and_sign(grads: list[torch.Tensor], sign: Sign | None, max_norm: float | None) -> None:
    """Flip and clip in one pass: multiply the gradients by ``sign × min(1, max_norm /
    (‖g‖ + 1e-6))``, the coefficient torch's clip_grad_norm_ uses. The norm does not
    depend on the sign and multiplying by ±1 is exact, so this equals flipping, then
    clipping, bit for bit, without a second pass over the gradients; nothing leaves the
    device."""
    factor = sign
    if max_norm is not None and grads:
        total_norm = global_norm(grads)
        coefficient = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        factor = coefficient if sign is None else coefficient * sign
    apply_sign(grads, factor)


def is_ascent(sign: Sign | None) -> torch.Tensor | float:
    """1 if this step's gradient was flipped, else 0 (a tensor when sign is one)."""
    if sign is None:
        return 0.0
    if isinstance(sign, torch.Tensor):
        return (sign < 0).to(torch.float32)
    return 1.0 if sign < 0 else 0.0
