"""Seed groups and baselines: which runs are repeats of one experiment, and against what
each experiment is compared.

A seed group holds the runs that differ only by seed. Runs that share a seed too are
replicates, not independent evidence: their best losses are averaged into one value per
seed, so a group's n counts distinct seeds. Each non-baseline group is compared with the
baseline group of the same model and data whose training settings are closest.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional, Sequence

from flood_cli.run_reader import Run, canonical
from flood_cli.stats import Interval, Sample, difference_interval, verdict_for


@dataclass(eq=False)  # identity, not field equality: groups are dictionary keys
class Group:
    """Runs that differ only by seed."""

    id: str
    label: str
    runs: list[Run]

    # Every member shares these (they make up its group key), so the first run speaks for all.
    @property
    def context_key(self) -> str:
        return self.runs[0].context_key

    @property
    def mode(self) -> Optional[str]:
        return self.runs[0].mode

    @property
    def settings(self) -> dict[str, Any]:
        return self.runs[0].settings

    @cached_property
    def best_losses_by_seed(self) -> dict[Any, list[float]]:
        """Best validation losses of the complete runs, by seed.

        A run without a known seed stands alone: it cannot be shown to repeat another.
        """
        by_seed: dict[Any, list[float]] = {}
        for run in self.runs:
            if run.counts_in_statistics:
                seed = run.seed if run.seed is not None else ("unknown seed", str(run.path))
                by_seed.setdefault(seed, []).append(run.best_val_loss)  # type: ignore[arg-type]
        return by_seed

    @cached_property
    def sample(self) -> Optional[Sample]:
        """One value per seed: the mean over that seed's replicate runs."""
        values = tuple(statistics.mean(losses) for losses in self.best_losses_by_seed.values())
        return Sample(values) if values else None

    @property
    def n_seeds(self) -> int:
        return self.sample.n if self.sample else 0

    @property
    def counted_runs(self) -> int:
        return sum(len(losses) for losses in self.best_losses_by_seed.values())

    @property
    def left_out(self) -> int:
        return sum(not run.counts_in_statistics for run in self.runs)

    @property
    def is_baseline(self) -> bool:
        return self.mode == "baseline"


@dataclass
class Comparison:
    """A seed group against its baseline group: difference of mean best validation loss."""

    group: Group
    baseline: Group
    difference: float
    difference_pct: Optional[float]
    interval: Optional[Interval]
    verdict: str
    notes: list[str] = field(default_factory=list)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Seed groups, ordered by mean best validation loss (groups without one last)."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.group_key, []).append(run)
    groups = [Group(id="", label="", runs=members) for members in by_key.values()]
    groups.sort(key=lambda g: (g.sample is None, g.sample.mean if g.sample else 0.0, g.runs[0].name))
    for number, (group, label) in enumerate(zip(groups, _group_labels(groups)), start=1):
        group.id, group.label = f"g{number}", label
        for run in group.runs:
            run.group = group
    return groups


def compare_with_baselines(groups: Sequence[Group]) -> list[Comparison]:
    """Each non-baseline group against its baseline group.

    Runs get their difference to the baseline group's mean too, incomplete runs as they
    stand; a comparison needs complete runs on both sides.
    """
    comparisons = []
    for group, (baseline, others) in choose_baselines(groups).items():
        reference = baseline.sample.mean  # type: ignore[union-attr]
        for run in group.runs:
            if run.best_val_loss is not None:
                run.diff_to_baseline = run.best_val_loss - reference
                run.diff_to_baseline_pct = 100.0 * run.diff_to_baseline / reference if reference else None
        if group.sample is not None:
            comparisons.append(_compare(group, baseline, others))
    return comparisons


def choose_baselines(groups: Sequence[Group]) -> dict[Group, tuple[Group, list[Group]]]:
    """For each non-baseline group: its baseline group and the other candidates.

    A baseline group matches when it has the same model and data sections; among
    several, the closest training settings win (a baseline at the same lr and epochs),
    then the one with the most seeds.
    """
    baselines = [g for g in groups if g.is_baseline and g.sample is not None]
    chosen = {}
    for group in groups:
        if group.is_baseline:
            continue
        candidates = [b for b in baselines if b.context_key == group.context_key]
        if candidates:
            candidates.sort(key=lambda b: (_training_distance(group, b), -b.sample.n, b.id))  # type: ignore[union-attr]
            chosen[group] = (candidates[0], candidates[1:])
    return chosen


def _compare(group: Group, baseline: Group, others: Sequence[Group]) -> Comparison:
    sample, reference = group.sample, baseline.sample
    assert sample is not None and reference is not None
    difference = sample.mean - reference.mean
    interval = difference_interval(sample, reference)
    notes = []
    if interval is not None and interval.method == "pooled":
        single, spread = (group, baseline) if sample.n < 2 else (baseline, group)
        notes.append(f"one seed in {single.id}: the interval borrows {spread.id}'s seed spread (assumes equal spread)")
    if others:
        ids = ", ".join(b.id for b in sorted([baseline, *others], key=lambda b: int(b.id[1:])))
        notes.append(f"baseline groups {ids} match; chose {baseline.id}: closest training settings, then most seeds")
    return Comparison(
        group=group,
        baseline=baseline,
        difference=difference,
        difference_pct=100.0 * difference / reference.mean if reference.mean else None,
        interval=interval,
        verdict=verdict_for(interval, sample, reference),
        notes=notes,
    )


def _training_distance(a: Group, b: Group) -> int:
    """How many training settings (other than the mode's own) two groups disagree on."""
    mode_keys = {"train.mode", "train.b", "train.ascent_lr"}
    keys = {k for k in (*a.settings, *b.settings) if k.startswith("train.")} - mode_keys
    return sum(a.settings.get(key) != b.settings.get(key) for key in keys)


def _group_labels(groups: Sequence[Group]) -> list[str]:
    """mode, b, lr, ascent_lr, plus whatever else differs between the groups."""
    all_keys = sorted({key for group in groups for key in group.settings})
    # Runs without a config.yaml are labelled by name; they do not make keys "vary".
    configured = [g for g in groups if "folder" not in g.settings and "from_summary.model" not in g.settings]
    varying = [
        key for key in all_keys
        # mode, b, lr and ascent_lr are in every label already.
        if not key.endswith(".mode")
        and key.rsplit(".", 1)[-1] not in ("b", "lr", "ascent_lr")
        # A key some runs lack (written by an older flood) varies too.
        and len({canonical(group.settings[key]) if key in group.settings else "<absent>" for group in configured}) > 1
    ]
    labels = []
    for group in groups:
        run = group.runs[0]
        parts = [run.mode or "?"]
        for key, value in (("b", run.b), ("lr", run.lr), ("alr", run.ascent_lr)):
            if value is not None:
                parts.append(f"{key}={value:g}")
        for key in varying:
            if key in group.settings:
                parts.append(f"{key.rsplit('.', 1)[-1]}={_short_value(group.settings[key])}")
        if "folder" in group.settings:
            parts.append(f"({run.name})")
        elif "from_summary.model" in group.settings:
            parts.append("[no config.yaml]")
        labels.append(" ".join(parts))
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[index] = f"{label} #{seen[label]}"
    return labels


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1]
    return str(value)
