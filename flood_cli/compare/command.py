"""`flood compare`: read run folders and put them side by side, honestly.

The pipeline is discover -> load -> group -> compare -> render, one module each, all on
the types of flood_cli.compare.model (Run, Group, Comparison, Report):

* flood_cli.compare.discovery: the arguments -> run folders (parents, sweeps, globs);
* flood_cli.compare.reader: one run folder -> a Run, tolerating runs in progress and
  damaged files (each costs one warning line);
* flood_cli.compare.grouping: runs that differ only by seed form a seed group (one value per
  seed); each group is compared with a baseline group of the same model and data;
* flood_cli.compare.stats: the interval of each difference (Welch's t), so that seed noise shows;
* flood_cli.compare.tables builds the tables, flood_cli.compare.render prints them as text
  or Markdown, flood_cli.compare.records writes JSON and CSV; flood_cli.compare.plots draws
  curves and imports matplotlib only when a plot is asked for.

Only the standard library and PyYAML are imported, never torch, numpy or pandas: a
thousand run folders must compare in about a second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flood_cli.compare.discovery import discover_runs
from flood_cli.compare.grouping import (
    HOLM,
    RAW,
    compare_with_baselines,
    group_runs,
    replicate_disagreements,
    unready_baselines,
)
from flood_cli.compare.model import LOSS, Judged, Report, Run
from flood_cli.compare.plots import plot_runs
from flood_cli.compare.reader import judge, load_run
from flood_cli.compare.records import report_json, write_csv
from flood_cli.compare.render import render_markdown, render_terminal, terminal_width
from flood_cli.compare.tables import first_few, report_tables
from flood_cli.core.errors import FloodError, escaped, shown_repr
from flood_cli.core.metrics import BY_NAME, METRIC_NAMES
from flood_cli.runs.folder import METRICS_FILE

X_AXES = ("epoch", "step")
SEEDS_AS = ("band", "lines")
# How many skipped arguments "no runs found" names before it says "and N more".
ERROR_SHOWS = 3


@dataclass
class CompareOutput:
    """What the CLI prints: ``text`` on stdout, one ``warning: ...`` line per warning."""

    text: str
    warnings: list[str]


def compare_command(
    paths: Sequence[Path],
    plot: Path | None = None,
    csv_path: Path | None = None,
    markdown: bool = False,
    as_json: bool = False,
    x_axis: str = "epoch",
    now: float | None = None,
    wide: bool = False,
    width: int | None = None,
    seeds_as: str = "band",
    raw_verdicts: bool = False,
    metric: str = "loss",
) -> CompareOutput:
    """Compare run folders; what `flood compare` prints, plus files for --plot / --csv.

    The text tables fit ``width`` columns (default: ``COLUMNS``, or the terminal's width
    when stdout is one; no limit in a pipe) by leaving out and abbreviating the least
    useful columns; ``wide`` prints every column. Markdown, JSON and CSV are complete.
    The verdicts are Holm-adjusted over the comparisons of the report; ``raw_verdicts``
    judges each comparison alone. ``metric`` is what groups are judged on: the validation
    loss, accuracy or one of train.metrics (the best of a run is its highest value then).
    """
    if x_axis not in X_AXES:
        raise FloodError(f"--x {x_axis!r} is not an axis; use epoch or step")
    if seeds_as not in SEEDS_AS:
        raise FloodError(f"--seeds-as {seeds_as!r} is not a choice; use band (mean ± sd of a seed group) or lines (one per run)")
    if markdown and as_json:
        raise FloodError("--markdown and --json print different formats; pick one")
    judged = judged_metric(metric)
    report = build_report(paths, now=now, rule=RAW if raw_verdicts else HOLM, judged=judged)
    written = []
    if csv_path is not None:
        write_csv(report, csv_path)
        written.append(f"wrote {escaped(str(csv_path))}")
    if plot is not None:
        written.append(f"wrote {escaped(str(plot_runs(report, plot, x_axis=x_axis, seeds_as=seeds_as)))}")
    if as_json:
        return CompareOutput(text=report_json(report), warnings=list(report.warnings))
    tables = report_tables(report)
    if markdown:
        text = render_markdown(tables)
    else:
        text = render_terminal(tables, width=None if wide else (width or terminal_width()))
    return CompareOutput(text="\n\n".join([text, *written]) if written else text, warnings=list(report.warnings))


def judged_metric(name: str) -> Judged:
    """What --metric names: loss (the default), accuracy or one of train.metrics, with or
    without val_ in front."""
    bare = name.strip().removeprefix("val_")
    if bare == "loss":
        return LOSS
    if bare == "accuracy":
        return Judged("val_accuracy", higher_is_better=True)
    if bare in BY_NAME:
        return Judged(f"val_{bare}", higher_is_better=BY_NAME[bare].higher_is_better)
    raise FloodError(f"--metric {shown_repr(name)} is not a metric; use loss, accuracy or one of {', '.join(METRIC_NAMES)}")


def build_report(paths: Sequence[Path], now: float | None = None, rule: str = HOLM, judged: Judged = LOSS) -> Report:
    """Discover, load, group and compare (verdicts by ``rule``: Holm-adjusted or raw),
    judging groups on ``judged``. Raises FloodError when no run is usable, or none has
    the judged column."""
    now = time.time() if now is None else now
    discovery = discover_runs(paths)
    if not discovery.run_dirs:
        raise FloodError(_no_runs_message(paths, discovery.skipped))
    warnings = discovery.warnings
    runs: list[Run] = []
    skipped: list[str] = []
    for run_dir in discovery.run_dirs:
        run, warning = load_run(run_dir, now)
        if warning:
            warnings.append(warning)
        if run is None:
            skipped.append(warning or str(run_dir))
        else:
            runs.append(run)
    if not runs:
        shown = ", ".join(str(p) for p in paths)
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise FloodError(f"no usable runs in {shown}: {skipped[0]}{more}")
    _disambiguate_names(runs)
    if judged != LOSS:
        _judge_runs(runs, judged, warnings)
    groups = group_runs(runs)
    comparisons = compare_with_baselines(groups, rule)
    warnings.extend(replicate_disagreements(groups))
    runs.sort(key=_by_best_loss)
    return Report(runs=runs, groups=groups, comparisons=comparisons, warnings=warnings,
                  unready_baselines=unready_baselines(groups), judged=judged)


def _no_runs_message(paths: Sequence[Path], skipped: list[tuple[str, str]]) -> str:
    """Name each argument with the reason it holds no run, so that a typo is obvious."""
    where = first_few([f"{argument} ({reason})" for argument, reason in skipped], ERROR_SHOWS)
    where = where or ", ".join(str(p) for p in paths) or "(no paths given)"
    return f"no runs found in {where}; pass run folders or folders that hold them (each has {METRICS_FILE})"


def _judge_runs(runs: Sequence[Run], judged: Judged, warnings: list[str]) -> None:
    """Each run judged on ``judged``; a run without its column is listed but left out
    of the statistics (one warning line), and none having it is an error."""
    lacking = [run for run in runs if not judge(run, judged)]
    metric = judged.column.removeprefix("val_")
    if len(lacking) == len(runs):
        raise FloodError(
            f"--metric {metric}: no run has a {judged.column} column in its {METRICS_FILE}; "
            f"train with train.metrics: [{metric}] to compare on it, or leave --metric out to compare on val_loss"
        )
    if lacking:
        warnings.append(
            f"{first_few([run.name for run in lacking], ERROR_SHOWS)}: no {judged.column} column "
            f"(trained without train.metrics: [{metric}]); listed, left out of the statistics"
        )


def _by_best_loss(run: Run) -> tuple[bool, float, str]:
    best = run.score
    return (best is None, run.judged.sort_key(best) if best is not None else 0.0, str(run.path))


def _disambiguate_names(runs: Sequence[Run]) -> None:
    """Two folders named alike (runs-a/x, runs-b/x) are told apart by their parent."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.path.parent.name}/{run.path.name}"
