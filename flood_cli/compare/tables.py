"""Build the `flood compare` tables from a report: runs, seed groups, comparisons with
the baseline, and where each run was best. Long explanations go below a table as
numbered footnotes so that its lines stay short; render.py prints them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flood_cli.compare.grouping import HOLM, format_p
from flood_cli.compare.model import LOSS, Comparison, Group, Judged, Report, Row, Run
from flood_cli.compare.reader import format_epoch
from flood_cli.compare.render import CUT, IMPROVING, STOPPED_EARLY, Table
from flood_cli.compare.stats import ALPHA, CI_LEVEL, Interval


def improving_note(column: str = "val_loss") -> str:
    return (
        f"{IMPROVING} best {column} at the last evaluation: the run was still improving when it stopped, "
        "its best is not reached; a verdict on it is premature (train longer)."
    )


def judged_noun(judged: Judged) -> str:
    """How titles name what groups are judged on."""
    return "validation loss" if judged == LOSS else f"{judged.column} ({'higher' if judged.higher_is_better else 'lower'} is better)"


# ---------------------------------------------------------------------------
# The four tables


def report_tables(report: Report) -> list[Table]:
    tables = [runs_table(report), groups_table(report)]
    if report.comparisons:
        tables.append(comparisons_table(report.comparisons, report.judged))
    tables.append(curves_table(report.runs))
    return tables


DIFF_MEAN = "Δ vs baseline mean"
DIFF_SEED = "Δ vs same-seed baseline"


def runs_table(report: Report) -> Table:
    has_baseline = any(run.diff_to_baseline is not None for run in report.runs)
    has_paired = any(run.paired_diff_to_baseline is not None for run in report.runs)
    column = report.judged.column
    best_column, final_column = f"best {column}", f"final {column}"
    columns = ["run", "group", "mode", "b", "lr", "ascent_lr", "seed", "epochs", best_column,
               DIFF_MEAN, DIFF_SEED, final_column, "status"]
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
            _format_number(run.score) if run.judged_row else "nan",
            _difference_cell(run.diff_to_baseline, run.diff_to_baseline_pct),
            _difference_cell(run.paired_diff_to_baseline, run.paired_diff_to_baseline_pct),
            _format_number(run.final_row.get(column)),
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
        footnotes.append(improving_note(column))
    if stopped := [run for run in report.runs if run.stopped_at_step is not None]:
        footnotes.append(stopped_early_note(stopped))
    return Table(
        title=f"Runs, sorted by best {judged_noun(report.judged)}",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"b", "lr", "ascent_lr", "seed", "epochs", best_column, DIFF_MEAN, DIFF_SEED,
                                 final_column}),
        footnotes=footnotes,
        legend=[
            (DIFF_MEAN, f"{best_column} − the baseline group's mean over its seeds (and in % of that mean)."),
            (DIFF_SEED, f"{best_column} − that of the baseline run with the same seed, same data order and "
                        "initialisation (and in %): the paired difference, without the luck of the seed that "
                        "both share; blank where the baseline has no complete run of that seed."),
        ],
        short={best_column: "best", DIFF_MEAN: "Δ mean", DIFF_SEED: "Δ same seed", final_column: "final",
               "ascent_lr": "alr", "epochs": "ep"},
        drop_order=("ascent_lr", "epochs", final_column, "lr", "b", CUT, "mode", DIFF_MEAN, "group"),
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
        if run.complete and run.score is None:
            state = f"without a finite {run.judged.column}"
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
        title=f"Seed groups: best {judged_noun(report.judged)} of runs that differ only by seed (mean ± sd over seeds)",
        columns=["group", "settings", "runs", "seeds", "mean ± sd", "min", "max"],
        rows=rows,
        right_aligned=frozenset({"runs", "seeds", "mean ± sd", "min", "max"}),
        footnotes=_groups_footnotes(report.groups, report.judged),
        drop_order=("min", "max", CUT, "runs"),
        elastic={"settings": 32},
    )


def _groups_footnotes(groups: Sequence[Group], judged: Judged = LOSS) -> list[str]:
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
        what = "validation loss" if judged == LOSS else judged.column
        footnotes.append(f"Runs left out of the statistics (incomplete, or no finite {what}): {first_few(left_out)}.")
    return footnotes


def first_few(items: Sequence[str], shown: int = 6) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


INTERVAL = f"{CI_LEVEL:.0%} interval"
PAIRED_INTERVAL = f"{CI_LEVEL:.0%} paired interval"
METHOD_NAMES = {"welch": "Welch", "pooled": "pooled", "paired": "paired"}


P_RAW = "p"
P_HOLM = "Holm p"


def comparisons_table(comparisons: Sequence[Comparison], judged: Judged = LOSS) -> Table:

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
    better = "Lower loss is better." if judged == LOSS else f"{'Higher' if judged.higher_is_better else 'Lower'} {judged.column} is better."
    return Table(
        title=f"Against the baseline: best {judged_noun(judged)}, group − baseline ({CI_LEVEL:.0%} intervals)",
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
                         f"method in brackets. {better}") if "paired Δ" in columns else
                        f"from Welch's test (method in brackets). {better}"),
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
        + ([improving_note(runs[0].judged.column)] if improving else [])
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


def stopped_early_note(runs: Sequence[Run]) -> str:
    return f"{STOPPED_EARLY} stopped early (train.early_stopping): " + first_few(
        [f"{run.name} at step {run.stopped_at_step}" for run in runs]
    ) + "."


def _status_cell(run: Run) -> str:
    improving = f" {IMPROVING}" if run.still_improving else ""
    if run.stopped_at_step is not None:
        improving = f" {STOPPED_EARLY}"
    if run.status == "completed":
        return "completed" + improving
    progress = format_epoch(run.final_row["epoch"]) + (f"/{run.epochs}" if run.epochs else "")
    return f"{run.status} {progress}" + ("" if run.complete else " (incomplete)") + improving


def _difference_cell(value: float | None, pct: float | None) -> str:
    if value is None:
        return ""
    return _format_number(value, sign=True) + (f" ({_format_number(pct, sign=True, digits=2)}%)" if pct is not None else "")
