"""Render a `flood compare` report: aligned text, Markdown, JSON and CSV.

The text and Markdown forms print the same four tables (runs, seed groups, comparisons
with the baseline, where each run was best); long explanations go below a table as
numbered footnotes so that its lines stay short. JSON and CSV carry full precision.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flood_cli.compare.reader import Row, Run, format_epoch
from flood_cli.compare.stats import ALPHA, CI_LEVEL
from flood_cli.core.errors import FloodError, escaped

if TYPE_CHECKING:
    from flood_cli.compare.command import Report
    from flood_cli.compare.grouping import Comparison, Group
    from flood_cli.compare.stats import Interval

JSON_VERSION = 1
CSV_COLUMNS = (
    "name", "group", "group_label", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "model", "data",
    "best_val_loss", "best_epoch", "best_step", "val_accuracy_at_best", "best_val_accuracy",
    "best_val_accuracy_epoch", "final_val_loss", "final_val_accuracy", "diff_to_baseline",
    "diff_to_baseline_pct", "loss_up_accuracy_up_epochs", "status", "complete", "path",
    # added later, after the first columns so that reading by position still works
    "paired_diff_to_baseline", "paired_diff_to_baseline_pct", "still_improving",
    # the run's group against its baseline (blank for baselines and groups without one)
    "verdict", "verdict_method", "p_value", "p_value_holm",
)
COLUMN_GAP = "  "
# Footnotes are prose: wrapped to this width in the terminal (Markdown reflows by itself).
FOOTNOTE_WIDTH = 100
# A cell cut to fit the terminal keeps at least this many characters.
MIN_CUT_WIDTH = 8
# In a table's drop_order: cut the elastic columns to their own widths here.
CUT = "<cut elastic columns>"
# Marks a run whose best validation loss is its last evaluation (still improving).
IMPROVING = "†"
IMPROVING_NOTE = (
    f"{IMPROVING} best val_loss at the last evaluation: the run was still improving when it stopped, "
    "its best is not reached; a verdict on it is premature (train longer)."
)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    right_aligned: frozenset[str] = frozenset()
    footnotes: list[str] = field(default_factory=list)
    # What a column means, printed under the table as "<column>: <text>" while the column
    # is shown (under its short name when the terminal is narrow).
    legend: list[tuple[str, str]] = field(default_factory=list)
    # Fitting a narrow terminal: shorter headers, then columns left out in drop_order, in
    # which CUT marks where the elastic columns are cut (in the middle, with "…") down to
    # the width given here; if that is not enough, they are cut further at the end.
    short: dict[str, str] = field(default_factory=dict)
    drop_order: tuple[str, ...] = ()
    elastic: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The four tables


def report_tables(report: Report) -> list[Table]:
    tables = [runs_table(report), groups_table(report)]
    if report.comparisons:
        tables.append(comparisons_table(report.comparisons))
    tables.append(curves_table(report.runs))
    return tables


DIFF_MEAN = "Δ vs baseline mean"
DIFF_SEED = "Δ vs same-seed baseline"


def runs_table(report: Report) -> Table:
    has_baseline = any(run.diff_to_baseline is not None for run in report.runs)
    has_paired = any(run.paired_diff_to_baseline is not None for run in report.runs)
    columns = ["run", "group", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "best val_loss",
               DIFF_MEAN, DIFF_SEED, "final val_loss", "status"]
    rows = [
        [
            run.name,
            run.group.id if run.group else "",
            run.mode or "?",
            _format_g(run.b),
            _format_g(run.lr),
            _format_g(run.ascent_lr),
            "" if run.seed is None else str(run.seed),
            "" if run.epochs is None else str(run.epochs),
            _format_number(run.best_val_loss) if run.best_row else "nan",
            _difference_cell(run.diff_to_baseline, run.diff_to_baseline_pct),
            _difference_cell(run.paired_diff_to_baseline, run.paired_diff_to_baseline_pct),
            _format_number(run.final_row["val_loss"]),
            _status_cell(run),
        ]
        for run in report.runs
    ]
    footnotes = []
    if not has_baseline:
        _drop_column(columns, rows, DIFF_MEAN)
    if not has_paired:
        _drop_column(columns, rows, DIFF_SEED)
    footnotes.extend(_unready_baseline_notes(report))
    if not has_baseline and not report.unready_baselines and any(run.mode != "baseline" for run in report.runs):
        footnotes.append("No baseline of the same model and data among these runs: no differences shown.")
    if any(run.still_improving for run in report.runs):
        footnotes.append(IMPROVING_NOTE)
    return Table(
        title="Runs, sorted by best validation loss",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"b", "lr", "ascent_lr", "seed", "epochs", "best val_loss", DIFF_MEAN, DIFF_SEED,
                                 "final val_loss"}),
        footnotes=footnotes,
        legend=[
            (DIFF_MEAN, "best val_loss − the baseline group's mean over its seeds (and in % of that mean)."),
            (DIFF_SEED, "best val_loss − that of the baseline run with the same seed, same data order and "
                        "initialisation (and in %): the paired difference, without the luck of the seed that "
                        "both share; blank where the baseline has no complete run of that seed."),
        ],
        short={"best val_loss": "best", DIFF_MEAN: "Δ mean", DIFF_SEED: "Δ same seed", "final val_loss": "final",
               "ascent_lr": "alr", "epochs": "ep"},
        drop_order=("ascent_lr", "epochs", "final val_loss", "lr", "b", CUT, "mode", DIFF_MEAN, "group"),
        elastic={"run": 28, "status": 27},
    )


def _unready_baseline_notes(report: Report) -> list[str]:
    """Why a group shows no difference although a baseline of its model and data exists."""
    by_baseline: dict[str, list[str]] = {}
    described: dict[str, str] = {}
    for group, baselines in report.unready_baselines.items():
        for baseline in baselines:
            by_baseline.setdefault(baseline.id, []).append(group.id)
            described[baseline.id] = f"{baseline.id} ({baseline.label}: {_run_states(baseline)})"
    notes = []
    for baseline_id, group_ids in by_baseline.items():
        notes.append(
            f"The baseline of the same model and data as {', '.join(group_ids)} is {described[baseline_id]}, "
            "with no complete run yet: no differences shown until one completes."
        )
    return notes


def _run_states(group: Group) -> str:
    """How a group's runs stand: "2 running, 1 failed"."""
    counts: dict[str, int] = {}
    for run in group.runs:
        state = "incomplete" if run.status in ("unknown", "completed") and not run.complete else run.status
        if run.complete and run.best_val_loss is None:
            state = "without a finite val_loss"
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


def groups_table(report: Report) -> Table:
    rows = []
    for group in report.groups:
        sample = group.sample
        mean_sd = ""
        if sample is not None:
            mean_sd = _format_number(sample.mean) + (f" ± {_format_number(sample.sd)}" if sample.sd is not None else " (one seed)")
        rows.append([
            group.id,
            group.label,
            str(len(group.runs)),
            str(group.n_seeds),
            mean_sd,
            _format_number(min(sample.values)) if sample else "",
            _format_number(max(sample.values)) if sample else "",
        ])
    return Table(
        title="Seed groups: best validation loss of runs that differ only by seed (mean ± sd over seeds)",
        columns=["group", "settings", "runs", "seeds", "mean ± sd", "min", "max"],
        rows=rows,
        right_aligned=frozenset({"runs", "seeds", "mean ± sd", "min", "max"}),
        footnotes=_groups_footnotes(report.groups),
        drop_order=("min", "max", CUT, "runs"),
        elastic={"settings": 32},
    )


def _groups_footnotes(groups: Sequence[Group]) -> list[str]:
    """Why a group has fewer seeds than runs: replicates, and runs left out."""
    replicates = [
        f"{group.id} seed {seed} ×{len(losses)}"
        for group in groups
        for seed, losses in group.best_losses_by_seed.items()
        if len(losses) > 1
    ]
    left_out = [f"{group.id} {group.left_out}" for group in groups if group.left_out]
    footnotes = []
    if replicates:
        footnotes.append(
            "Runs that share a seed are replicates, not independent seeds: each seed counts once, "
            f"as the mean of its runs ({first_few(replicates)})."
        )
    if left_out:
        footnotes.append(f"Runs left out of the statistics (incomplete, or no finite validation loss): {first_few(left_out)}.")
    return footnotes


def first_few(items: Sequence[str], shown: int = 6) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


INTERVAL = f"{CI_LEVEL:.0%} interval"
PAIRED_INTERVAL = f"{CI_LEVEL:.0%} paired interval"
METHOD_NAMES = {"welch": "Welch", "pooled": "pooled", "paired": "paired"}


P_RAW = "p"
P_HOLM = "Holm p"


def comparisons_table(comparisons: Sequence[Comparison]) -> Table:
    from flood_cli.compare.grouping import HOLM, format_p

    footnotes: list[str] = []
    rows = []
    for comparison in comparisons:
        interval, paired = comparison.interval, comparison.paired
        markers = []
        for note in comparison.notes:  # the same note for several rows is printed once
            if note not in footnotes:
                footnotes.append(note)
            markers.append(f"[{footnotes.index(note) + 1}]")
        verdict = comparison.verdict
        if comparison.verdict_method:
            verdict += f" ({METHOD_NAMES[comparison.verdict_method]})"
        rows.append([
            comparison.group.id,
            f"{comparison.baseline.id} ({seeds_text(comparison.baseline)})",
            str(comparison.group.n_seeds),
            _difference_cell(comparison.difference, comparison.difference_pct),
            _interval_cell(interval),
            _method_cell(comparison),
            _difference_cell(comparison.paired_difference, comparison.paired_difference_pct),
            str(len(comparison.paired_seeds)) if comparison.paired_seeds else "",
            _interval_cell(paired),
            format_p(comparison.p_value) if comparison.p_value is not None else "",
            format_p(comparison.p_holm) if comparison.p_holm is not None else "",
            verdict,
            " ".join(markers),
        ])
    columns = ["group", "baseline", "seeds", "Δ of means", INTERVAL, "method", "paired Δ", "paired seeds",
               PAIRED_INTERVAL, P_RAW, P_HOLM, "verdict", "notes"]
    if all(comparison.interval is None for comparison in comparisons):  # the verdicts say why
        _drop_column(columns, rows, INTERVAL)
        _drop_column(columns, rows, "method")
    if all(comparison.paired is None for comparison in comparisons):
        _drop_column(columns, rows, PAIRED_INTERVAL)
    if not any(comparison.paired_seeds for comparison in comparisons):
        _drop_column(columns, rows, "paired Δ")
        _drop_column(columns, rows, "paired seeds")
    tested = [comparison for comparison in comparisons if comparison.p_value is not None]
    if not tested:
        _drop_column(columns, rows, P_RAW)
        _drop_column(columns, rows, P_HOLM)
    elif len(tested) == 1:  # Holm's adjustment of a single p is that p
        _drop_column(columns, rows, P_HOLM)
    if not footnotes:
        _drop_column(columns, rows, "notes")
    holm = all(comparison.verdict_rule == HOLM for comparison in comparisons)
    # In a narrow terminal the difference the verdicts do not rest on goes first, and the
    # p they do not follow; the p they follow stays beside them.
    mostly_paired = 2 * sum(c.verdict_method == "paired" for c in comparisons) >= len(comparisons)
    secondary = (INTERVAL, "Δ of means") if mostly_paired else (PAIRED_INTERVAL, "paired Δ")
    primary = "paired Δ" if mostly_paired else "Δ of means"  # its interval, kept, is centred on it
    unused_p = P_RAW if holm and P_HOLM in columns else P_HOLM
    rule = [verdict_rule_note(len(tested), holm)] if tested else []
    return Table(
        title=f"Against the baseline: best validation loss, group − baseline ({CI_LEVEL:.0%} intervals)",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"seeds", "Δ of means", "paired Δ", "paired seeds", P_RAW, P_HOLM}),
        footnotes=rule + [f"[{number}] {note}" for number, note in enumerate(footnotes, start=1)],
        legend=[
            ("Δ of means", "the group's mean − the baseline group's mean, each over its own seeds; "
                           f"{INTERVAL}: Welch's t (pooled when one side has a single seed: shown for scale, no "
                           "verdict rests on it), method beside it."),
            ("paired Δ", "the mean, over the seeds both groups ran (paired seeds), of group − baseline at the same "
                         f"seed (same data order and initialisation); {PAIRED_INTERVAL}: Student's t on those "
                         "per-seed differences, df = paired seeds − 1."),
            (P_RAW, "two-sided p of the t test named in the verdict's brackets (paired, else Welch)."
                    if "paired Δ" in columns else "two-sided p of Welch's t test."),
            (P_HOLM, f"p adjusted by Holm's method over the {len(tested)} comparisons that have one."),
            ("verdict", (f"from the paired test when two or more seeds are shared, else from Welch's (the {INTERVAL}); "
                         "method in brackets. Lower loss is better.") if "paired Δ" in columns else
                        "from Welch's test (method in brackets). Lower loss is better."),
        ],
        short={"baseline": "base", "Δ of means": "Δ means", INTERVAL: f"{CI_LEVEL:.0%} CI",
               "paired seeds": "pairs", PAIRED_INTERVAL: f"paired {CI_LEVEL:.0%} CI"},
        drop_order=("method", "paired seeds", "seeds", unused_p, "baseline", *secondary, primary),
        elastic={"verdict": 26},  # "within seed noise (paired)" whole
    )


def verdict_rule_note(family: int, holm: bool) -> str:
    """What the verdicts mean, given how many comparisons are read together."""
    chance = 1.0 - (1.0 - ALPHA) ** family
    if holm and family == 1:
        return (
            f"Verdicts: lower or higher when p is below {ALPHA:g} (its {INTERVAL} leaves out 0), else within seed "
            "noise. With several comparisons in one table their p values are adjusted by Holm's method."
        )
    if holm:
        return (
            f"Verdicts: lower or higher when the Holm-adjusted p ({P_HOLM}) over the {family} comparisons in this "
            f"table is below {ALPHA:g}, else within seed noise; this keeps the chance of any false difference among "
            f"them at {ALPHA:.0%} (judged alone at {ALPHA:g} each: {chance:.0%}). The intervals are not adjusted: "
            "one may leave out 0 while its verdict is within seed noise. --raw-verdicts judges each comparison alone."
        )
    return (
        f"Verdicts (--raw-verdicts): each comparison judged alone, lower or higher when its p is below {ALPHA:g} "
        f"(its {INTERVAL} leaves out 0), not adjusted for the {family} comparison{'s' if family != 1 else ''} "
        f"made: if nothing differed, some false difference would show with chance {chance:.0%}. "
        f"Without --raw-verdicts the verdicts follow the Holm-adjusted p ({P_HOLM})."
    )


def seeds_text(group: Group) -> str:
    return f"{group.n_seeds} seed{'s' if group.n_seeds != 1 else ''}"


def _interval_cell(interval: Interval | None) -> str:
    if interval is None:
        return ""
    return f"[{_format_number(interval.low, sign=True)}, {_format_number(interval.high, sign=True)}]"


def _method_cell(comparison: Comparison) -> str:
    interval = comparison.interval
    if interval is None:
        return ""
    return f"Welch, df {interval.df:.1f}" if interval.method == "welch" else f"pooled, df {interval.df:.0f}"


BEST_AT = "best val_loss at epoch (step)"
UP_UP = "loss ↑ and acc ↑ at epoch"


def curves_table(runs: Sequence[Run]) -> Table:
    rows = []
    differ = False
    improving = False
    # Calibration at the best-loss evaluation, for runs that log it (newer runs do).
    calibrated = any(run.best_row is not None and run.best_row.get("val_ece") is not None for run in runs)
    for run in runs:
        best, best_accuracy = run.best_row, run.best_accuracy_row
        apart = best is not None and best_accuracy is not None and best is not best_accuracy
        differ = differ or apart
        improving = improving or run.still_improving
        row = [
            run.name,
            (f"{_at(best)}: {_format_number(run.best_val_loss)}" if best else "") + (f" {IMPROVING}" if run.still_improving else ""),
            _format_number(best.get("val_accuracy")) if best else "",
            (f"{_at(best_accuracy)}: {_format_number(best_accuracy.get('val_accuracy'))}" if best_accuracy else "")
            + (" *" if apart else ""),
            ", ".join(format_epoch(row["epoch"]) for row in run.loss_up_accuracy_up) or "none",
        ]
        if calibrated:
            ece = best.get("val_ece") if best else None
            wrong = best.get("val_confident_wrong") if best else None
            row += [_format_number(ece) if ece is not None else "", f"{wrong:.0f}" if wrong is not None else ""]
        rows.append(row)
    columns = ["run", BEST_AT, "val_acc there", "best val_acc at epoch (step)", UP_UP]
    if calibrated:
        columns += ["ECE there", "conf. wrong there"]
    return Table(
        title="Where each run was best, and evaluations where validation loss and accuracy rose together",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"val_acc there", "ECE there", "conf. wrong there"}),
        footnotes=(
            ["* best loss and best accuracy at different evaluations: which checkpoint to keep depends on the metric you report."]
            if differ else []
        )
        + ([IMPROVING_NOTE] if improving else [])
        + (["ECE: expected calibration error (15 bins); conf. wrong: validation examples wrong with p > 0.9."] if calibrated else []),
        short={BEST_AT: "best loss at", "val_acc there": "acc there", "best val_acc at epoch (step)": "best acc at",
               UP_UP: "loss↑ acc↑ at", "ECE there": "ECE", "conf. wrong there": "conf. wrong"},
        drop_order=("conf. wrong there", CUT, "ECE there", "val_acc there"),
        elastic={"run": 28, UP_UP: 16},
    )


def _drop_column(columns: list[str], rows: list[list[str]], name: str) -> None:
    index = columns.index(name)
    columns.pop(index)
    for row in rows:
        row.pop(index)


# ---------------------------------------------------------------------------
# Cells


# Beyond this, fixed-point figures would run to hundreds of digits (a loss of 1e308 in a
# damaged metrics.csv): exponent notation instead.
FIXED_POINT_UP_TO = 1e6


def _format_number(value: float | None, sign: bool = False, digits: int = 4) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    style = "f" if abs(value) < FIXED_POINT_UP_TO else "e"
    return f"{value:{'+' if sign else ''}.{digits}{style}}"


def _format_g(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _at(row: Row | None) -> str:
    if row is None:
        return ""
    step = row.get("step")
    return format_epoch(row["epoch"]) + (f" ({format_epoch(step)})" if step is not None else "")


def _status_cell(run: Run) -> str:
    improving = f" {IMPROVING}" if run.still_improving else ""
    if run.status == "completed":
        return "completed" + improving
    progress = format_epoch(run.final_row["epoch"]) + (f"/{run.epochs}" if run.epochs else "")
    return f"{run.status} {progress}" + ("" if run.complete else " (incomplete)") + improving


def _difference_cell(value: float | None, pct: float | None) -> str:
    if value is None:
        return ""
    return _format_number(value, sign=True) + (f" ({_format_number(pct, sign=True, digits=2)}%)" if pct is not None else "")


# ---------------------------------------------------------------------------
# Text and Markdown


def _escaped_table(table: Table) -> Table:
    """The table with control characters in its cells escaped (a run folder named with a
    line break, a setting holding one): each row stays one line, and nothing in a name
    reaches the terminal as a control sequence. JSON and CSV carry the text as it is."""
    return replace(
        table,
        rows=[[escaped(cell) for cell in row] for row in table.rows],
        footnotes=[escaped(footnote) for footnote in table.footnotes],
    )


def terminal_width() -> int | None:
    """The width the text tables must fit: ``COLUMNS`` when set to a number, else the
    terminal's when stdout is one; None (no limit) in a pipe or a file."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if sys.stdout is not None and sys.stdout.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def _table_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    widths = [max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)]
    return 1 + sum(widths) + len(COLUMN_GAP) * (len(widths) - 1)


def _cut(cell: str, width: int) -> str:
    """A cell cut to ``width`` characters in the middle: both ends of a run name stay."""
    if len(cell) <= width:
        return cell
    head = (width - 1) * 3 // 5
    return cell[:head] + "…" + cell[len(cell) - (width - 1 - head):]


def fit_table(table: Table, width: int | None) -> Table:
    """The table made to fit ``width`` characters: short headers, then the least useful
    columns left out (a footnote names them) and the elastic cells cut with "…", in the
    table's drop_order; last, the elastic cells cut further. A table that fits, or
    ``width`` None, is returned as it is."""
    if width is None or _table_width(table.columns, table.rows) <= width:
        return table
    keys = list(table.columns)  # the full names, which drop_order, elastic and legend use
    columns = [table.short.get(name, name) for name in keys]
    rows = [list(row) for row in table.rows]
    left_out = []

    def cut_elastic(floor: int | None) -> None:
        """Cut the widest elastic column by one character at a time until the table
        fits or every elastic column is at its floor (its own width, or ``floor``)."""
        excess = _table_width(columns, rows) - width
        widths = {i: max([len(columns[i]), *(len(row[i]) for row in rows)]) for i, key in enumerate(keys) if key in table.elastic}
        floors = {i: max(len(columns[i]), MIN_CUT_WIDTH, table.elastic[keys[i]] if floor is None else floor) for i in widths}
        while excess > 0:
            shrinkable = [i for i in widths if widths[i] > floors[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        for row in rows:
            for i, cell_width in widths.items():
                row[i] = _cut(row[i], cell_width)

    for name in table.drop_order:
        if _table_width(columns, rows) <= width:
            break
        if name == CUT:
            cut_elastic(None)
        elif name in keys:
            index = keys.index(name)
            for listed in (keys, columns, *rows):
                listed.pop(index)
            left_out.append(name)
    if _table_width(columns, rows) > width:
        cut_elastic(MIN_CUT_WIDTH)
    footnotes = list(table.footnotes)
    if left_out:
        footnotes.append(f"Left out to fit {width} columns: {', '.join(left_out)}; --wide shows every column.")
    return replace(
        table,
        columns=columns,
        rows=rows,
        right_aligned=frozenset(table.short.get(name, name) for name in table.right_aligned) | table.right_aligned,
        footnotes=footnotes,
        legend=[(table.short.get(name, name), _short_names(text, table.short, keys)) for name, text in table.legend if name in keys],
        elastic={},
        short={},
        drop_order=(),
    )


def _short_names(text: str, short: dict[str, str], shown: Sequence[str]) -> str:
    """A legend's text naming the columns as the fitted table heads them."""
    for name in sorted((n for n in short if n in shown), key=len, reverse=True):
        text = text.replace(name, short[name])
    return text


def _legend_lines(table: Table) -> list[str]:
    """ "<column>: <what it is>" for each explained column the table shows."""
    return [f"{name}: {text}" for name, text in table.legend if name in table.columns]


def render_terminal(tables: Sequence[Table], width: int | None = None) -> str:
    """Plain aligned columns, one line per row, footnotes below; within ``width``
    characters when given (see `fit_table`).

    Deliberately not rich: rich measures and wraps every cell, about a second for a
    thousand runs, and folded cells make a table harder to read than a long line.
    """
    prose_width = FOOTNOTE_WIDTH if width is None else max(20, min(FOOTNOTE_WIDTH, width))
    blocks = []
    for table in (fit_table(_escaped_table(t), width) for t in tables):
        widths = [max([len(column), *(len(row[i]) for row in table.rows)]) for i, column in enumerate(table.columns)]
        right = [column in table.right_aligned for column in table.columns]

        def line(cells: Sequence[str]) -> str:
            padded = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right, strict=True))  # noqa: B023 (called within this iteration only)
            return " " + COLUMN_GAP.join(padded).rstrip()

        rule = " " + "─" * (sum(widths) + len(COLUMN_GAP) * (len(widths) - 1))
        title = [table.title] if width is None else textwrap.wrap(table.title, prose_width, break_on_hyphens=False)
        lines = [*title, "", line(table.columns), rule, *(line(row) for row in table.rows)]
        prose = _legend_lines(table) + table.footnotes
        if prose:
            lines.append("")
            for footnote in prose:
                indent = " " * (footnote.index(" ") + 1) if footnote.startswith(("[", "*", IMPROVING)) else "  "
                lines += textwrap.wrap(footnote, prose_width, subsequent_indent=indent, break_on_hyphens=False)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_markdown(tables: Sequence[Table]) -> str:
    blocks = []
    for table in map(_escaped_table, tables):
        lines = [f"**{table.title}**", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join("---:" if c in table.right_aligned else "---" for c in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        for footnote in _legend_lines(table) + table.footnotes:
            # A leading "*" would start a bullet list and vanish; "[1]" stays literal.
            lines += ["", "\\" + footnote if footnote.startswith("*") else footnote]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------
# JSON and CSV


def report_json(report: Report) -> str:
    document = {
        "version": JSON_VERSION,
        "runs": [run_record(run) for run in report.runs],
        "groups": [group_record(group) for group in report.groups],
        "comparisons": [comparison_record(c) for c in report.comparisons],
        "warnings": list(report.warnings),
    }
    return json.dumps(document, indent=2, allow_nan=False, default=str)


def run_record(run: Run) -> dict[str, Any]:
    best, best_accuracy, final = run.best_row, run.best_accuracy_row, run.final_row
    return {
        "name": run.name,
        "path": str(run.path),
        "group": run.group.id if run.group else None,
        "status": run.status,
        "complete": run.complete,
        "mode": run.mode,
        "b": run.b,
        "lr": run.lr,
        "ascent_lr": run.ascent_lr,
        "seed": run.seed,
        "epochs": run.epochs,
        "model": run.model,
        "data": run.data,
        "evaluations": len(run.rows),
        "last_epoch": _row_get(final, "epoch"),
        "best_val_loss": _row_get(best, "val_loss"),
        "best_epoch": _row_get(best, "epoch"),
        "best_step": _as_step(_row_get(best, "step")),
        "val_accuracy_at_best": _row_get(best, "val_accuracy"),
        "best_val_accuracy": _row_get(best_accuracy, "val_accuracy"),
        "best_val_accuracy_epoch": _row_get(best_accuracy, "epoch"),
        "best_val_accuracy_step": _as_step(_row_get(best_accuracy, "step")),
        "final_val_loss": _row_get(final, "val_loss"),
        "final_val_accuracy": _row_get(final, "val_accuracy"),
        "diff_to_baseline": _json_number(run.diff_to_baseline),
        "diff_to_baseline_pct": _json_number(run.diff_to_baseline_pct),
        "loss_up_accuracy_up": [
            {
                "epoch": _row_get(row, "epoch"),
                "step": _as_step(_row_get(row, "step")),
                "val_loss": _row_get(row, "val_loss"),
                "val_accuracy": _row_get(row, "val_accuracy"),
                "val_loss_top10_share": _row_get(row, "val_loss_top10_share"),
                "val_ece": _row_get(row, "val_ece"),
                "val_confident_wrong": _row_get(row, "val_confident_wrong"),
            }
            for row in run.loss_up_accuracy_up
        ],
        "best_val_ece": _row_get(best, "val_ece"),
        "best_val_confidence": _row_get(best, "val_confidence"),
        "best_val_confident_wrong": _row_get(best, "val_confident_wrong"),
        "paired_diff_to_baseline": _json_number(run.paired_diff_to_baseline),
        "paired_diff_to_baseline_pct": _json_number(run.paired_diff_to_baseline_pct),
        "still_improving": run.still_improving,
    }


def group_record(group: Group) -> dict[str, Any]:
    sample = group.sample
    return {
        "id": group.id,
        "label": group.label,
        "mode": group.mode,
        "baseline": group.is_baseline,
        "runs": [run.name for run in group.runs],
        "n": group.n_seeds,
        "n_runs": group.counted_runs,
        "n_left_out": group.left_out,
        "best_val_loss_mean": _json_number(sample.mean) if sample else None,
        "best_val_loss_sd": _json_number(sample.sd) if sample else None,
        "best_val_loss_min": _json_number(min(sample.values)) if sample else None,
        "best_val_loss_max": _json_number(max(sample.values)) if sample else None,
        "settings": group.settings,
    }


def comparison_record(comparison: Comparison) -> dict[str, Any]:
    interval = comparison.interval
    sample, reference = comparison.group.sample, comparison.baseline.sample
    assert sample is not None and reference is not None
    return {
        "group": comparison.group.id,
        "baseline": comparison.baseline.id,
        "n": sample.n,
        "n_baseline": reference.n,
        "mean": _json_number(sample.mean),
        "baseline_mean": _json_number(reference.mean),
        "difference": _json_number(comparison.difference),  # None when beyond a float (1e308 - -1e308)
        "difference_pct": _json_number(comparison.difference_pct),
        "ci_level": CI_LEVEL,
        "ci_low": interval.low if interval else None,
        "ci_high": interval.high if interval else None,
        "method": interval.method if interval else None,
        "df": interval.df if interval else None,
        "verdict": comparison.verdict,
        "note": "; ".join(comparison.notes),
        "verdict_method": comparison.verdict_method,
        "unpaired_verdict": comparison.unpaired_verdict,
        "paired_seeds": list(comparison.paired_seeds),
        "n_paired": len(comparison.paired_seeds),
        "paired_differences": [_json_number(d) for d in comparison.paired_differences],
        "paired_difference": _json_number(comparison.paired_difference),
        "paired_difference_pct": _json_number(comparison.paired_difference_pct),
        "paired_ci_low": comparison.paired.low if comparison.paired else None,
        "paired_ci_high": comparison.paired.high if comparison.paired else None,
        "paired_df": comparison.paired.df if comparison.paired else None,
        "still_improving": [run.name for run in comparison.still_improving],
        "ci_p_value": _json_number(interval.p) if interval and interval.p is not None else None,
        "paired_p_value": _json_number(comparison.paired.p) if comparison.paired and comparison.paired.p is not None else None,
        "p_value": _json_number(comparison.p_value) if comparison.p_value is not None else None,
        "p_value_holm": _json_number(comparison.p_holm) if comparison.p_holm is not None else None,
        "verdict_rule": comparison.verdict_rule,
        "holm_family": comparison.family,
    }


def write_csv(report: Report, path: Path) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            by_group = {id(comparison.group): comparison for comparison in report.comparisons}
            for run in report.runs:
                record = run_record(run)
                comparison = by_group.get(id(run.group))
                if comparison is not None:
                    record.update(verdict=comparison.verdict, verdict_method=comparison.verdict_method,
                                  p_value=comparison.p_value, p_value_holm=comparison.p_holm)
                record["group_label"] = run.group.label if run.group else ""
                record["loss_up_accuracy_up_epochs"] = ";".join(format_epoch(r["epoch"]) for r in run.loss_up_accuracy_up)
                writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    except OSError as exc:
        raise FloodError(f"cannot write CSV {path}: {exc.strerror or exc}; pass a writable --csv path") from None


def _json_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _row_get(row: Row | None, key: str) -> float | None:
    return _json_number(row.get(key)) if row else None


def _as_step(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) else None
