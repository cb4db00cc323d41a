"""`flood compare` as data: the JSON document (--json) and one CSV row per run (--csv),
at full precision (non-finite numbers become null / blank).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from flood_cli.compare.model import LOSS, Comparison, Group, Report, Row, Run
from flood_cli.compare.reader import format_epoch
from flood_cli.compare.stats import CI_LEVEL
from flood_cli.core.errors import FloodError

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
    # train.early_stopping ended the run at this step (blank when it trained to its end)
    "stopped_at_step",
)


def report_json(report: Report) -> str:
    document = {
        "version": JSON_VERSION,
        "runs": [run_record(run) for run in report.runs],
        "groups": [group_record(group) for group in report.groups],
        "comparisons": [comparison_record(c) for c in report.comparisons],
        "warnings": list(report.warnings),
    }
    if report.judged != LOSS:  # --metric: what the groups, differences and comparisons are judged on
        document["metric"] = report.judged.column
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
        # with --metric f1_macro: best_val_f1_macro (its highest value), what the differences are of
        **({f"best_{run.judged.column}": _json_number(run.score)} if run.judged != LOSS else {}),
        "stopped_early": run.stopped_at_step is not None,
        "stopped_at_step": run.stopped_at_step,
    }


def group_record(group: Group) -> dict[str, Any]:
    sample, judged = group.sample, group.judged.column
    return {
        "id": group.id,
        "label": group.label,
        "mode": group.mode,
        "baseline": group.is_baseline,
        "runs": [run.name for run in group.runs],
        "n": group.n_seeds,
        "n_runs": group.counted_runs,
        "n_left_out": group.left_out,
        # best_val_loss_mean ..., or best_val_f1_macro_mean ... with --metric f1_macro
        f"best_{judged}_mean": _json_number(sample.mean) if sample else None,
        f"best_{judged}_sd": _json_number(sample.sd) if sample else None,
        f"best_{judged}_min": _json_number(min(sample.values)) if sample else None,
        f"best_{judged}_max": _json_number(max(sample.values)) if sample else None,
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
