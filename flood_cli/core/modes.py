"""The training modes, each declared once: its name, its own config keys and section,
whether it has a flood level, its optimizer and its sweep curve.

Config (the ``train.mode`` choices and one optional ``train.<mode>`` section per mode
that has one, built from its :class:`SectionSpec`), the sweep (which keys belong to
which mode), AdaFlood's auxiliary runs, compare's plots and grouping and the CLI read
this table. The objectives (torch) live in ``flood_cli.train.objectives.OBJECTIVES``,
keyed by the same names. Plain data: importing it costs nothing (no pydantic, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict


class Bounds(TypedDict, total=False):
    """An option's bounds, as pydantic's Field takes them."""

    ge: float
    gt: float
    le: float
    lt: float


@dataclass(frozen=True)
class Option:
    """One key of a mode's config section: its type, default, description and bounds
    (pydantic's Field arguments)."""

    name: str
    type: type
    default: Any
    description: str
    bounds: Bounds = field(default_factory=Bounds)


@dataclass(frozen=True)
class SectionSpec:
    """A mode's own config section ``train.<mode>``: the config model's name, docstring
    and keys (config.schema builds the pydantic model)."""

    model: str
    doc: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class ModeSpec:
    """One training mode.

    ``keys``: its own train keys that are unset (null) in every other mode; ``options``:
    its own train keys that have a default (left as they are in other modes). A mode with
    a ``section`` owns ``train.<name>`` too (filled with defaults when the mode is chosen).
    ``flood_level``: it floods at ``train.b``. ``optimizer``: the optimizer it steps with
    unless ``train.optimizer`` says otherwise. ``curve_key``: a sweep over this key draws
    a curve of the best validation loss against it."""

    name: str
    help: str
    section: SectionSpec | None = None
    keys: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    flood_level: bool = False
    optimizer: str = "adamw"
    curve_key: str | None = None

    @property
    def own_keys(self) -> tuple[str, ...]:
        """Every train key of this mode's own: ``keys``, ``options``, its section's key."""
        return (*self.keys, *self.options, *((f"train.{self.name}",) if self.section else ()))


MODES: tuple[ModeSpec, ...] = (
    ModeSpec("baseline", "plain fine-tuning: minimise the mean cross-entropy"),
    ModeSpec(
        "flooding",
        "|L − b| + b on the step's mean loss (Ishida et al., 2020)",
        keys=("train.b",),
        flood_level=True,
        curve_key="train.b",
    ),
    ModeSpec(
        "iflood",
        "mean_i(|ℓ_i − b| + b): each example floods on its own (Xie et al., 2022)",
        keys=("train.b",),
        flood_level=True,
        curve_key="train.b",
    ),
    ModeSpec(
        "adaflood",
        "per-example flood levels from auxiliary models that never saw the example (Bae et al., 2024)",
        section=SectionSpec(
            "AdaFloodConfig",
            "Mode adaflood: per-example flood levels from auxiliary models trained without each example.",
            (
                Option("gamma", float, 0.5, "1 is plain training, 0 floods at the held-out loss", {"ge": 0.0, "le": 1.0}),
                Option("folds", int, 2, "auxiliary models, each trained without one fold of the training split", {"ge": 2, "le": 20}),
            ),
        ),
    ),
    ModeSpec(
        "alternate",
        "descent steps at lr and ascent steps at ascent_lr, in turn",
        keys=("train.ascent_lr",),
        options=("train.ascent_optimizer",),
        curve_key="train.ascent_lr",
    ),
    ModeSpec(
        "backstitch",
        "Kaldi's backstitch: −scale·lr, then (1 + scale)·lr on the same batch; plain SGD",
        section=SectionSpec(
            "BackstitchConfig",
            "Mode backstitch (Kaldi): a step of −scale·lr, then one of (1 + scale)·lr on the same batch.",
            (
                Option("scale", float, 0.3, "α; Kaldi's recipes use 0.2–0.3", {"gt": 0.0}),
                Option("interval", int, 1, "backstitch every n-th mini-batch (plain steps in between)", {"ge": 1}),
            ),
        ),
        optimizer="sgd",
    ),
    ModeSpec(
        "gradnorm",
        "L + λ‖∇L‖ by finite differences (Zhao et al., 2022)",
        section=SectionSpec(
            "GradNormConfig",
            "Mode gradnorm: L + λ‖∇L‖ by finite differences, α = λ / r (α = 1 is SAM).",
            (
                Option("r", float, 0.1, "the perturbation radius", {"gt": 0.0}),
                Option("alpha", float, 0.8, "weight of the perturbed gradient", {"ge": 0.0, "le": 1.0}),
            ),
        ),
    ),
)
MODE_NAMES: tuple[str, ...] = tuple(mode.name for mode in MODES)
BY_NAME: dict[str, ModeSpec] = {mode.name: mode for mode in MODES}
# Modes with a flood level b on the training loss.
FLOOD_LEVEL_MODES: tuple[str, ...] = tuple(mode.name for mode in MODES if mode.flood_level)
# Each mode's own train keys (train.b, train.gradnorm, ...), for the modes that have any.
MODE_KEYS_OF: dict[str, tuple[str, ...]] = {mode.name: mode.own_keys for mode in MODES if mode.own_keys}
