"""The `flood compare` model: a run read from its folder (Run, its metrics rows), a seed
group of runs (Group), a group against its baseline (Comparison), and the whole report
(Report). Plain data with the few properties computed from it; reader, grouping, tables,
records and plots all work on these types. Standard library and compare.stats only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from flood_cli.compare.stats import Interval, Sample

Row = dict[str, float | None]


@dataclass(frozen=True)
class Judged:
    """What groups are judged on (``flood compare --metric``): a metrics.csv column, and
    which way is better. The best of a run is its lowest value, or its highest."""

    column: str = "val_loss"
    higher_is_better: bool = False

    def best(self, rows: list[Row]) -> Row | None:
        """The row with the best finite value (the first of equals), None without one."""
        sign = -1.0 if self.higher_is_better else 1.0
        finite = [row for row in rows if (value := row.get(self.column)) is not None and math.isfinite(value)]
        return min(finite, key=lambda row: sign * row[self.column]) if finite else None  # type: ignore[operator]

    def sort_key(self, value: float) -> float:
        return -value if self.higher_is_better else value


LOSS = Judged()


@dataclass
class Run:
    """One run folder, read and summarised. ``rows`` are the metrics.csv evaluations.

    Runs with equal ``group_key`` differ only by seed; ``context_key`` is model + data
    (what a baseline must share); ``settings`` is the flattened config behind the key.
    """

    path: Path
    name: str
    status: str
    complete: bool
    mode: str | None
    b: float | None
    lr: float | None
    ascent_lr: float | None
    seed: int | None
    epochs: int | None
    model: str
    data: str
    group_key: str
    context_key: str
    settings: dict[str, Any]
    rows: list[Row]
    best_row: Row | None = None
    best_accuracy_row: Row | None = None
    # What the statistics take of this run: its best row under ``judged`` (best_row for the loss).
    judged: Judged = LOSS
    judged_row: Row | None = None
    stopped_at_step: int | None = None  # train.early_stopping ended the run there
    loss_up_accuracy_up: list[Row] = field(default_factory=list)
    # Set by grouping.
    group: Group | None = None
    diff_to_baseline: float | None = None  # best judged value (val_loss) − the baseline group's mean
    diff_to_baseline_pct: float | None = None
    # best val_loss − that of the baseline group's run(s) with the same seed (their mean)
    paired_diff_to_baseline: float | None = None
    paired_diff_to_baseline_pct: float | None = None

    @property
    def best_val_loss(self) -> float | None:
        return self.best_row["val_loss"] if self.best_row else None

    @property
    def score(self) -> float | None:
        """The run's best value of the judged column (its best val_loss by default)."""
        return self.judged_row[self.judged.column] if self.judged_row else None

    @property
    def final_row(self) -> Row:
        return self.rows[-1]

    @property
    def counts_in_statistics(self) -> bool:
        return self.complete and self.score is not None

    @property
    def still_improving(self) -> bool:
        """A complete run whose best judged value is its last evaluation (of two or
        more): it was still improving when it stopped, so its best is not reached. Never
        one that early stopping ended: it stopped because it no longer improved (by more
        than min_delta), even if its last val_loss is its lowest."""
        if self.stopped_at_step is not None:
            return False
        return self.complete and len(self.rows) >= 2 and self.judged_row is not None and self.judged_row is self.rows[-1]


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
    def mode(self) -> str | None:
        return self.runs[0].mode

    @property
    def settings(self) -> dict[str, Any]:
        return self.runs[0].settings

    @property
    def judged(self) -> Judged:
        return self.runs[0].judged

    @cached_property
    def best_losses_by_seed(self) -> dict[Any, list[float]]:
        """Best judged values (validation losses by default) of the complete runs, by seed.

        A run without a known seed stands alone: it cannot be shown to repeat another.
        """
        by_seed: dict[Any, list[float]] = {}
        for run in self.runs:
            if run.counts_in_statistics:
                seed = run.seed if run.seed is not None else ("unknown seed", str(run.path))
                by_seed.setdefault(seed, []).append(run.score)  # type: ignore[arg-type]
        return by_seed

    @cached_property
    def sample(self) -> Sample | None:
        """One value per seed: the mean over that seed's replicate runs."""
        values = tuple(statistics.mean(losses) for losses in self.best_losses_by_seed.values())
        return Sample(values) if values else None

    @cached_property
    def seed_values(self) -> dict[Any, float]:
        """The value of each known seed (the mean of its replicate runs), for pairing."""
        return {
            seed: statistics.mean(losses) for seed, losses in self.best_losses_by_seed.items()
            if not isinstance(seed, tuple)  # ("unknown seed", path): pairs with nothing
        }

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
    """A seed group against its baseline group: difference of mean best validation loss
    (``interval``: Welch or pooled), and on the seeds both ran, the mean of the per-seed
    differences (``paired``: Student's t on them). The verdict rests on the paired t test
    when there is a paired interval (two or more shared seeds with spread), else on
    Welch's; ``verdict_method`` says which ("paired", "welch" or None: a pooled interval,
    one side with a single seed, gives no verdict). ``p_value`` is that test's two-sided
    p; ``p_holm`` the same adjusted by Holm's method over all the comparisons made
    together (``family``: how many have a p). ``verdict`` follows ``p_holm`` by default,
    ``p_value`` with ``verdict_rule`` "raw"."""

    group: Group
    baseline: Group
    difference: float
    difference_pct: float | None
    interval: Interval | None
    verdict: str
    notes: list[str] = field(default_factory=list)
    paired_seeds: list[Any] = field(default_factory=list)
    paired_differences: list[float] = field(default_factory=list)
    paired_difference: float | None = None
    paired_difference_pct: float | None = None
    paired: Interval | None = None
    verdict_method: str | None = None
    unpaired_verdict: str = ""
    still_improving: list[Run] = field(default_factory=list)
    p_value: float | None = None
    p_holm: float | None = None
    verdict_rule: str = "holm"  # "holm" or "raw"
    family: int = 0

    @property
    def tested_difference(self) -> float | None:
        """The difference the verdict's test is about: the paired mean, or Δ of means."""
        return self.paired_difference if self.verdict_method == "paired" else self.difference


@dataclass
class Report:
    runs: list[Run]  # sorted by best judged value (validation loss by default), best first
    groups: list[Group]  # sorted by mean best judged value, best first
    comparisons: list[Comparison]
    warnings: list[str]
    # Groups with no baseline to compare with because the matching baseline group has no
    # complete run yet: group -> those baseline groups.
    unready_baselines: dict[Group, list[Group]] = field(default_factory=dict)
    judged: Judged = LOSS  # what the groups are judged on (--metric)
