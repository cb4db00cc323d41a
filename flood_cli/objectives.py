"""The three training modes as small pure pieces.

Each mode answers, for one optimizer step, the questions the loop asks:

* ``learning_rate(step, scale)``: the rate for this step (host-side, no device sync);
* ``gradient_sign(step, step_loss)``: ``None`` to leave the gradient as it is, else a
  factor (+1 or -1, a Python float or a 0-dim tensor kept on the device) that the
  already computed gradient of the plain mean loss is multiplied by;
* ``optimizer_index(step)``: 0, or 1 for the ascent optimizer of mode alternate;
* ``ascent(step, sign)`` and ``objective(step, step_loss, sign)``: what to log.

``step_loss`` is the mean loss of the step's examples over every process.

Working on the gradient rather than on the loss keeps flooding exact under gradient
accumulation and data parallelism: ``d/dθ (|L − b| + b) = sign(L − b) · ∇L``, where
``L`` must be the mean loss of the *whole* optimizer step, which is only known once
every micro-batch has been through backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

Sign = Union[float, torch.Tensor]


def flood(loss: torch.Tensor, flood_level: float) -> torch.Tensor:
    """The flooded objective of Ishida et al. (2020): ``|L − b| + b``."""
    return (loss - flood_level).abs() + flood_level


def flood_sign(loss: torch.Tensor, flood_level: float) -> torch.Tensor:
    """``+1`` where ``L ≥ b`` (descent), ``-1`` where ``L < b`` (ascent); stays on the device."""
    return torch.where(loss < flood_level, -1.0, 1.0).to(loss.dtype)


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


@dataclass(frozen=True)
class Baseline:
    """Plain fine-tuning: minimise the mean cross-entropy."""

    lr: float
    name: str = "baseline"

    def learning_rate(self, step: int, scale: float) -> float:
        return self.lr * scale

    def gradient_sign(self, step: int, step_loss: torch.Tensor) -> Optional[Sign]:
        return None

    def optimizer_index(self, step: int) -> int:
        return 0

    def ascent(self, step: int, sign: Optional[Sign]) -> Union[float, torch.Tensor]:
        return 0.0

    def objective(self, step: int, step_loss: torch.Tensor, sign: Optional[Sign]) -> torch.Tensor:
        return step_loss


@dataclass(frozen=True)
class Flooding:
    """Minimise ``|L − b| + b``: descent above the flood level, ascent below it."""

    lr: float
    flood_level: float
    name: str = "flooding"

    def learning_rate(self, step: int, scale: float) -> float:
        return self.lr * scale

    def gradient_sign(self, step: int, step_loss: torch.Tensor) -> Optional[Sign]:
        return flood_sign(step_loss, self.flood_level)

    def optimizer_index(self, step: int) -> int:
        return 0

    def ascent(self, step: int, sign: Optional[Sign]) -> Union[float, torch.Tensor]:
        return is_ascent(sign)

    def objective(self, step: int, step_loss: torch.Tensor, sign: Optional[Sign]) -> torch.Tensor:
        return flood(step_loss, self.flood_level)


@dataclass(frozen=True)
class Alternate:
    """Even optimizer steps descend at ``lr``, odd ones ascend at ``ascent_lr``.

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
    name: str = "alternate"

    @staticmethod
    def is_ascent(step: int) -> bool:
        return step % 2 == 1

    def learning_rate(self, step: int, scale: float) -> float:
        return (self.ascent_lr if self.is_ascent(step) else self.lr) * scale

    def gradient_sign(self, step: int, step_loss: torch.Tensor) -> Optional[Sign]:
        return -1.0 if self.is_ascent(step) and self.ascent_optimizer == "shared" else None

    def optimizer_index(self, step: int) -> int:
        return 1 if self.is_ascent(step) and self.ascent_optimizer == "separate" else 0

    def ascent(self, step: int, sign: Optional[Sign]) -> Union[float, torch.Tensor]:
        return 1.0 if self.is_ascent(step) else 0.0

    def objective(self, step: int, step_loss: torch.Tensor, sign: Optional[Sign]) -> torch.Tensor:
        return -step_loss if self.is_ascent(step) else step_loss


Mode = Union[Baseline, Flooding, Alternate]


def make_mode(
    mode: str,
    lr: float,
    flood_level: Optional[float] = None,
    ascent_lr: Optional[float] = None,
    ascent_optimizer: str = "separate",
) -> Mode:
    """Build the mode object once; the loop never asks which mode it runs."""
    if mode == "baseline":
        return Baseline(lr)
    if mode == "flooding":
        assert flood_level is not None, "validated by the config"
        return Flooding(lr, flood_level)
    if mode == "alternate":
        assert ascent_lr is not None, "validated by the config"
        return Alternate(lr, ascent_lr, ascent_optimizer)
    raise ValueError(f"unknown mode {mode!r}")


def apply_sign(grads: list[torch.Tensor], sign: Optional[Sign]) -> None:
    """Multiply every gradient in place by ``sign`` (no host sync for tensor signs)."""
    if sign is None or not grads:
        return
    torch._foreach_mul_(grads, sign)


def clip_and_sign(grads: list[torch.Tensor], sign: Optional[Sign], max_norm: Optional[float]) -> None:
    """Flip and clip in one pass: multiply the gradients by ``sign × min(1, max_norm /
    (‖g‖ + 1e-6))``, the coefficient torch's clip_grad_norm_ uses. The norm does not
    depend on the sign and multiplying by ±1 is exact, so this equals flipping, then
    clipping, bit for bit, without a second pass over the gradients; nothing leaves the
    device."""
    factor = sign
    if max_norm is not None and grads:
        total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        coefficient = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        factor = coefficient if sign is None else coefficient * sign
    apply_sign(grads, factor)


def is_ascent(sign: Optional[Sign]) -> torch.Tensor | float:
    """1 if this step's gradient was flipped, else 0 (a tensor when sign is one)."""
    if sign is None:
        return 0.0
    if isinstance(sign, torch.Tensor):
        return (sign < 0).to(torch.float32)
    return 1.0 if sign < 0 else 0.0
