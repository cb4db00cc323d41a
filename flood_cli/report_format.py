"""Render a `flood compare` report: aligned text, Markdown, JSON and CSV.

The text and Markdown forms print the same four tables (runs, seed groups, comparisons
with the baseline, where each run was best); long explanations go below a table as
numbered footnotes so that its lines stay short. JSON and CSV carry full precision.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from flood_cli.errors import FloodError, escaped
from flood_cli.run_reader import Row, Run, format_epoch
from flood_cli.stats import CI_LEVEL

if TYPE_CHECKING:
    from flood_cli.compare import Report
    from flood_cli.grouping import Comparison, Group

JSON_VERSION = 1
CSV_COLUMNS = (
    "name", "group", "group_label", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "model", "data",
    "best_val_loss", "best_epoch", "best_step", "val_accuracy_at_best", "best_val_accuracy",
    "best_val_accuracy_epoch", "final_val_loss", "final_val_accuracy", "diff_to_baseline",
    "diff_to_baseline_pct", "loss_up_accuracy_up_epochs", "status", "complete", "path",
)
COLUMN_GAP = "  "
# Footnotes are prose: wrapped to this width in the terminal (Markdown reflows by itself).
FOOTNOTE_WIDTH = 100


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    right_aligned: frozenset[str] = frozenset()
    footnotes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# The four tables


def report_tables(report: "Report") -> list[Table]:
    tables = [runs_table(report), groups_table(report)]
    if report.comparisons:
        tables.append(comparisons_table(report.comparisons))
    tables.append(curves_table(report.runs))
    return tables


def runs_table(report: "Report") -> Table:
    has_baseline = any(run.diff_to_baseline is not None for run in report.runs)
    columns = ["run", "group", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "best val_loss",
               "Δ vs baseline", "final val_loss", "status"]
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
            _format_number(run.final_row["val_loss"]),
            _status_cell(run),
        ]
        for run in report.runs
    ]
    footnotes = []
    if not has_baseline:
        _drop_column(columns, rows, "Δ vs baseline")
        if any(run.mode != "baseline" for run in report.runs):
            footnotes.append("No baseline of the same model and data among these runs: no differences shown.")
    return Table(
        title="Runs, sorted by best validation loss",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"b", "lr", "ascent_lr", "seed", "epochs", "best val_loss", "Δ vs baseline",
                                 "final val_loss"}),
        footnotes=footnotes,
    )


def groups_table(report: "Report") -> Table:
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
    )


def _groups_footnotes(groups: Sequence["Group"]) -> list[str]:
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


def comparisons_table(comparisons: Sequence["Comparison"]) -> Table:
    footnotes: list[str] = []
    rows = []
    for comparison in comparisons:
        interval = comparison.interval
        markers = []
        for note in comparison.notes:  # the same note for several rows is printed once
            if note not in footnotes:
                footnotes.append(note)
            markers.append(f"[{footnotes.index(note) + 1}]")
        rows.append([
            comparison.group.id,
            f"{comparison.baseline.id} ({seeds_text(comparison.baseline)})",
            str(comparison.group.n_seeds),
            _difference_cell(comparison.difference, comparison.difference_pct),
            f"[{_format_number(interval.low, sign=True)}, {_format_number(interval.high, sign=True)}]" if interval else "",
            _method_cell(comparison),
            comparison.verdict,
            " ".join(markers),
        ])
    columns = ["group", "baseline", "seeds", "difference", f"{CI_LEVEL:.0%} interval", "method", "verdict", "notes"]
    if all(comparison.interval is None for comparison in comparisons):  # the verdicts say why
        _drop_column(columns, rows, f"{CI_LEVEL:.0%} interval")
        _drop_column(columns, rows, "method")
    if not footnotes:
        _drop_column(columns, rows, "notes")
    return Table(
        title=f"Against the baseline: mean best validation loss, group − baseline, {CI_LEVEL:.0%} interval",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"seeds", "difference"}),
        footnotes=[f"[{number}] {note}" for number, note in enumerate(footnotes, start=1)],
    )


def seeds_text(group: "Group") -> str:
    return f"{group.n_seeds} seed{'s' if group.n_seeds != 1 else ''}"


def _method_cell(comparison: "Comparison") -> str:
    interval = comparison.interval
    if interval is None:
        return ""
    return f"Welch, df {interval.df:.1f}" if interval.method == "welch" else f"pooled, df {interval.df:.0f}"


def curves_table(runs: Sequence[Run]) -> Table:
    rows = []
    differ = False
    # Calibration at the best-loss evaluation, for runs that log it (newer runs do).
    calibrated = any(run.best_row is not None and run.best_row.get("val_ece") is not None for run in runs)
    for run in runs:
        best, best_accuracy = run.best_row, run.best_accuracy_row
        apart = best is not None and best_accuracy is not None and best is not best_accuracy
        differ = differ or apart
        row = [
            run.name,
            f"{_at(best)}: {_format_number(run.best_val_loss)}" if best else "",
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
    columns = ["run", "best val_loss at epoch (step)", "val_acc there", "best val_acc at epoch (step)", "loss ↑ and acc ↑ at epoch"]
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
        + (["ECE: expected calibration error (15 bins); conf. wrong: validation examples wrong with p > 0.9."] if calibrated else []),
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


def _format_number(value: Optional[float], sign: bool = False, digits: int = 4) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    style = "f" if abs(value) < FIXED_POINT_UP_TO else "e"
    return f"{value:{'+' if sign else ''}.{digits}{style}}"


def _format_g(value: Optional[float]) -> str:
    return "" if value is None else f"{value:g}"


def _at(row: Optional[Row]) -> str:
    if row is None:
        return ""
    step = row.get("step")
    return format_epoch(row["epoch"]) + (f" ({format_epoch(step)})" if step is not None else "")


def _status_cell(run: Run) -> str:
    if run.status == "completed":
        return "completed"
    progress = format_epoch(run.final_row["epoch"]) + (f"/{run.epochs}" if run.epochs else "")
    return f"{run.status} {progress}" + ("" if run.complete else " (incomplete)")


def _difference_cell(value: Optional[float], pct: Optional[float]) -> str:
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


def render_terminal(tables: Sequence[Table]) -> str:
    """Plain aligned columns, one line per row, footnotes below.

    Deliberately not rich: rich measures and wraps every cell, about a second for a
    thousand runs, and folded cells make a table harder to read than a long line.
    """
    blocks = []
    for table in map(_escaped_table, tables):
        widths = [max([len(column), *(len(row[i]) for row in table.rows)]) for i, column in enumerate(table.columns)]
        right = [column in table.right_aligned for column in table.columns]

        def line(cells: Sequence[str]) -> str:
            padded = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right))
            return " " + COLUMN_GAP.join(padded).rstrip()

        rule = " " + "─" * (sum(widths) + len(COLUMN_GAP) * (len(widths) - 1))
        lines = [table.title, "", line(table.columns), rule, *(line(row) for row in table.rows)]
        if table.footnotes:
            lines.append("")
            for footnote in table.footnotes:
                indent = " " * (footnote.index(" ") + 1) if footnote.startswith(("[", "*")) else ""
                lines += textwrap.wrap(footnote, FOOTNOTE_WIDTH, subsequent_indent=indent, break_on_hyphens=False)
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
        for footnote in table.footnotes:
            # A leading "*" would start a bullet list and vanish; "[1]" stays literal.
            lines += ["", "\\" + footnote if footnote.startswith("*") else footnote]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------
# JSON and CSV


def report_json(report: "Report") -> str:
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
    }


def group_record(group: "Group") -> dict[str, Any]:
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


def comparison_record(comparison: "Comparison") -> dict[str, Any]:
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
    }


def write_csv(report: "Report", path: Path) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for run in report.runs:
                record = run_record(run)
                record["group_label"] = run.group.label if run.group else ""
                record["loss_up_accuracy_up_epochs"] = ";".join(format_epoch(r["epoch"]) for r in run.loss_up_accuracy_up)
                writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    except OSError as exc:
        raise FloodError(f"cannot write CSV {path}: {exc.strerror or exc}; pass a writable --csv path") from None


def _json_number(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def _row_get(row: Optional[Row], key: str) -> Optional[float]:
    return _json_number(row.get(key)) if row else None


def _as_step(value: Optional[float]) -> Optional[int]:
    return int(value) if value is not None and math.isfinite(value) else None
