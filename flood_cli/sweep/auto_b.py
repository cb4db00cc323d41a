"""`flood sweep --b auto[:0.5,1,2]`: flood levels placed from the sweep's own baseline.

The sweep runs the baseline for every seed first; once all are complete, each seed's
train_loss at its best evaluation (the metrics.csv row with the lowest val_loss, the
first of equal ones, as flood compare picks it) is read, their mean taken, and the flood
levels put at multiplier x mean (4 significant digits). The levels are stored in
sweep.yaml (and the study's record) with the flooding settings they make, so a resume
never places them again."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flood_cli.core.errors import FloodError, shown_repr
from flood_cli.runs.folder import read_metrics
from flood_cli.sweep.create import add_settings
from flood_cli.sweep.queue import _claims, _locked, queue_lock
from flood_cli.sweep.spec import Setting, SweepSpec
from flood_cli.sweep.storage import load_study, open_storage

DEFAULT_MULTIPLIERS = (0.5, 1.0, 2.0)
AUTO_EXAMPLE = "e.g. --b auto or --b auto:0.5,1,2"


def parse_auto_b(text: str | None) -> list[float] | None:
    """``auto`` -> the default multipliers; ``auto:0.5,1,2`` -> those; a --b without
    ``auto`` -> None (flood levels given as values). Each multiplier a positive number,
    given once; ``auto`` mixed with flood levels is refused."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    head, sep, first = items[0].partition(":")
    if head.strip().lower() != "auto":
        if any(item.lower().startswith("auto") for item in items):
            raise FloodError(
                f"--b {shown_repr(text)} mixes auto with flood levels; give either --b auto[:MULTIPLIERS] ({AUTO_EXAMPLE}) "
                "or flood levels (--b 0.05,0.1)"
            )
        return None
    if not sep:
        if len(items) > 1:
            raise FloodError(
                f"--b {shown_repr(text)} mixes auto with flood levels; give either --b auto[:MULTIPLIERS] ({AUTO_EXAMPLE}) "
                "or flood levels (--b 0.05,0.1)"
            )
        return list(DEFAULT_MULTIPLIERS)
    multipliers = []
    for item in [first.strip(), *items[1:]]:
        try:
            value = float(item)
        except ValueError:
            what = "has an empty multiplier" if not item else f"has {shown_repr(item)}, not a number"
            raise FloodError(f"--b {shown_repr(text)} {what}; give positive multipliers of the baseline's train loss, {AUTO_EXAMPLE}") from None
        if not math.isfinite(value) or value <= 0:
            raise FloodError(f"--b {shown_repr(text)}: multiplier {item} is not above 0; give positive multipliers, {AUTO_EXAMPLE}")
        if value in multipliers:
            raise FloodError(f"--b {shown_repr(text)} repeats the multiplier {item}; give each multiplier once")
        multipliers.append(value)
    return multipliers


def levels_pending(spec: SweepSpec) -> bool:
    return spec.levels_pending


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{value:g}" for value in values)


def _baseline_runs(spec: SweepSpec) -> list[tuple[int, str]]:
    baseline = Setting(spec.settings[0])
    return [(seed, baseline.run_name(seed)) for seed in spec.seeds]


def baselines_state(spec: SweepSpec, storage: Any) -> dict[str, tuple[str, str | None]]:
    """Each baseline run's latest trial: its state name and error (if it failed)."""
    claims = _claims(load_study(storage, spec.grid_study))
    state = {}
    for _, name in _baseline_runs(spec):
        trials = claims.get(("run", name), [])
        latest = trials[-1] if trials else None
        state[name] = (latest.state.name, latest.user_attrs.get("error")) if latest else ("NONE", None)
    return state


def baselines_done(spec: SweepSpec, storage: Any) -> bool:
    return all(state == "COMPLETE" for state, _ in baselines_state(spec, storage).values())


def train_loss_at_best(metrics: Path) -> float:
    """train_loss of the row with the lowest finite val_loss (the first of equal ones)."""
    rows = [row for row in read_metrics(metrics) if row.get("val_loss") is not None and math.isfinite(row["val_loss"])]
    if not rows:
        raise FloodError(f"{metrics} has no evaluation with a finite val_loss, so the baseline has no best evaluation; give flood levels with --b 0.05,0.1")
    best = min(rows, key=lambda row: row["val_loss"])
    loss = best.get("train_loss")
    if loss is None or not math.isfinite(loss):
        raise FloodError(f"{metrics} has no finite train_loss at its best evaluation (step {best.get('step')}); give flood levels with --b 0.05,0.1")
    return float(loss)


def place_levels(spec: SweepSpec, echo: Callable[[str], None]) -> list[float]:
    """Once every baseline seed is complete: the flood levels from their train loss,
    stored in sweep.yaml and the study, and their settings queued for every seed. Under
    the queue lock: a second process placing them at once takes the stored ones."""
    storage = open_storage(spec.storage_url)
    with _locked(queue_lock(spec)):
        record = load_study(storage, spec.grid_study).user_attrs.get("flood_sweep")
        stored = record.get("b_auto") if isinstance(record, dict) else None
        if isinstance(stored, dict) and "levels" in stored:
            spec.b_auto = dict(stored)
        else:
            for seed, name in _baseline_runs(spec):
                state, error = baselines_state(spec, storage)[name]
                if state != "COMPLETE":
                    why = f"failed ({error})" if error else "is not complete"
                    raise FloodError(
                        f"baseline seed {seed} (runs/{name}) {why}; the flood levels of --b auto need every baseline seed: "
                        f"fix the cause and run flood sweep --resume {spec.folder}"
                    )
            losses = [train_loss_at_best(spec.runs_dir / name / "metrics.csv") for _, name in _baseline_runs(spec)]
            mean = statistics.fmean(losses)
            multipliers = spec.b_auto["multipliers"]
            levels = [float(f"{multiplier * mean:.4g}") for multiplier in multipliers]
            if len(set(levels)) != len(levels) or not all(level > 0 for level in levels):
                raise FloodError(
                    f"the baseline's train loss at its best evaluation is {mean:.4g}: the multipliers {_numbers(multipliers)} give "
                    f"the flood levels {_numbers(levels)}, not distinct and above 0; start a sweep with flood levels (--b 0.05,0.1)"
                )
            spec.b_auto = {"multipliers": multipliers, "train_loss": float(f"{mean:.4g}"), "seeds": len(losses), "levels": levels}
        add_settings(spec, [{"train.mode": spec.mode, "train.b": level} for level in spec.b_auto["levels"]])
    levels = spec.b_auto["levels"]
    echo(
        f"flood levels: {_numbers(levels)} = {_numbers(spec.b_auto['multipliers'])} x the baseline's train loss at its best "
        f"evaluation ({spec.b_auto['train_loss']:g}, mean of {spec.b_auto['seeds']} seeds)"
    )
    return levels
