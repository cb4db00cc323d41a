"""Figures and tables of docs/study.md from the study's sweep folders.

    .venv/bin/python studies/report.py runs/studies/spam-clean runs/studies/spam-noisy

For each sweep: the grouped table (flood compare --markdown: mean ± sd over seeds, each
setting against the baseline with Welch and paired 95 % intervals, its verdicts
Holm-adjusted over the comparisons of its table), the b-curve, the
curves figure with seed bands, and the calibration diagnostics at each run's best
evaluation. Writes docs/img/study-<name>-*.png and prints Markdown to paste into
docs/study.md (the conclusions are written by hand from these numbers).
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import sys
from pathlib import Path

from flood_cli.compare.command import build_report, compare_command
from flood_cli.compare.stats import holm_adjust, paired_p_value

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"


def rows_of(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def completed_runs(folder: Path) -> dict[str, dict[int, Path]]:
    """setting -> seed -> run folder, completed runs only, the baseline first."""
    by_setting: dict[str, dict[int, Path]] = {}
    for run in sorted((folder / "runs").iterdir()):
        if run.name.startswith(".") or not (run / "summary.json").exists():
            continue
        summary = json.loads((run / "summary.json").read_text())
        if summary.get("status") != "completed":
            continue
        setting = run.name.rsplit("-s", 1)[0]
        by_setting.setdefault(setting, {})[int(summary["seed"])] = run
    return dict(sorted(by_setting.items(), key=lambda item: item[0] != "baseline"))


def mean_sd(values: list[float], digits: int = 4) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else ""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def p_text(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def reference_of(setting: str, settings: list[str]) -> str | None:
    """The baseline a setting is judged against: the one of its optimizer (backstitch is
    plain SGD: its SGD control at the same lr), else the AdamW baseline."""
    if setting == "baseline":
        return None
    if setting.startswith("backstitch"):
        lr = setting.rsplit("-lr", 1)[-1]
        control = f"baseline-optimizer=sgd-lr{lr}"
        if control in settings:
            return control
    return "baseline"


def settings_table(folder: Path) -> str:
    """Per setting against its baseline: best val loss, its paired same-seed difference
    with the two-sided paired t-test p and the Holm-adjusted p over all the settings of
    the study, and the accuracies (at the best-loss evaluation, and the best reached)."""
    runs = completed_runs(folder)
    rows_by = {setting: {seed: rows_of(run) for seed, run in seeds.items()} for setting, seeds in runs.items()}
    best_by = {
        setting: {seed: min(r, key=lambda row: row["val_loss"]) for seed, r in rows.items()} for setting, rows in rows_by.items()
    }
    lines, p_values = [], []
    for setting, seeds in runs.items():
        rows, best = rows_by[setting], best_by[setting]
        reference = reference_of(setting, list(runs))
        base = best_by.get(reference, {}) if reference else {}
        shared = sorted(set(best) & set(base))
        differences = [best[seed]["val_loss"] - base[seed]["val_loss"] for seed in shared]
        p = paired_p_value(differences) if reference else None
        p_values.append(p)
        lines.append([
            setting, str(len(seeds)), mean_sd([b["val_loss"] for b in best.values()]), reference or "",
            f"{statistics.mean(differences):+.4f}" if differences else "",
            p,
            mean_sd([b["val_accuracy"] for b in best.values()], 3),
            mean_sd([max(row["val_accuracy"] for row in r) for r in rows.values()], 3),
            mean_sd([r[-1]["val_loss"] for r in rows.values()]),
            f"{statistics.mean(json.loads((run / 'summary.json').read_text())['wall_time_s'] for run in seeds.values()):.0f} s",
        ])
    adjusted = holm_adjust(p_values)
    header = [
        "| setting | seeds | best val loss (mean ± sd) | against | paired Δ | paired p | Holm p "
        "| val accuracy at best loss | best val accuracy | last-epoch val loss | time per run |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    body = []
    for line, holm in zip(lines, adjusted, strict=True):
        p = line[5]
        line[5] = p_text(p)
        line.insert(6, p_text(holm))
        body.append("| " + " | ".join(line) + " |")
    return "\n".join(header + body)


def diagnostics(folder: Path) -> str:
    """Per setting: at each run's best-loss evaluation, ECE, confidently wrong count,
    the epoch, the training loss; and how many runs had evaluations where loss and
    accuracy rose together."""
    lines = [
        "| setting | runs | best epoch (mean) | train loss at best | ECE at best | confidently wrong at best (of the validation set) | runs with loss ↑ and accuracy ↑ | last-epoch val loss − best |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for setting, seeds in completed_runs(folder).items():
        bests, trains, eces, wrongs, rising, gaps = [], [], [], [], 0, []
        for run in seeds.values():
            rows = rows_of(run)
            best = min(rows, key=lambda row: row["val_loss"])
            bests.append(best["epoch"])
            trains.append(best["train_loss"])
            eces.append(best.get("val_ece", float("nan")))
            wrongs.append(best.get("val_confident_wrong", float("nan")))
            gaps.append(rows[-1]["val_loss"] - best["val_loss"])
            rising += any(
                b["val_loss"] > a["val_loss"] and b["val_accuracy"] > a["val_accuracy"] for a, b in zip(rows, rows[1:], strict=False)
            )
        lines.append(
            f"| {setting} | {len(seeds)} | {statistics.mean(bests):.1f} | {statistics.mean(trains):.3f} | "
            f"{statistics.mean(eces):.4f} | {statistics.mean(wrongs):.1f} | {rising} of {len(seeds)} | "
            f"{statistics.mean(gaps):+.4f} |"
        )
    return "\n".join(lines)


def focus_settings(folder: Path) -> set[str]:
    """The baselines, the flooding level nearest the baseline (the lowest b), AdaFlood and backstitch."""
    names = set(completed_runs(folder))
    floods = sorted((float(n.split("-b", 1)[1]), n) for n in names if n.startswith("flooding-b"))
    return {n for n in names if n.startswith(("baseline", "adaflood", "backstitch"))} | ({floods[0][1]} if floods else set())


def regime(folder: Path) -> str:
    """The check the study rests on: flooding acts once training loss falls well below
    validation loss, after the baseline's validation loss has bottomed out. So the
    baseline's best evaluation must not be its last."""
    runs = completed_runs(folder).get("baseline", {})
    if not runs:
        return "Regime check: no completed baseline run."
    last, rises = 0, []
    for run in runs.values():
        rows = rows_of(run)
        best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
        last += best == len(rows) - 1
        rises.append(rows[-1]["val_loss"] - rows[best]["val_loss"])
    verdict = "reached" if last == 0 else "NOT reached in every run: train longer"
    return (
        f"Regime check: the baseline's best evaluation is its last in {last} of {len(runs)} runs; "
        f"its last evaluation is {statistics.mean(rises):+.4f} above its best on average ({verdict})."
    )


def wall_time(folder: Path) -> str:
    summaries = [json.loads(p.read_text()) for p in (folder / "runs").glob("*/summary.json")]
    total = sum(float(s.get("wall_time_s") or 0) for s in summaries)
    return f"{len(summaries)} runs, {total / 3600:.2f} h of run time in all"


def main(folders: list[str]) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in folders:
        folder = Path(name)
        label = folder.name
        curves = IMAGES / f"study-{label}-curves.png"
        output = compare_command([folder / "runs"], markdown=True, plot=curves)
        # The same figure for the few settings the conclusions turn on, readable at a glance.
        focus = [run for run in sorted((folder / "runs").iterdir()) if run.name.rsplit("-s", 1)[0] in focus_settings(folder)]
        compare_command(focus, plot=IMAGES / f"study-{label}-focus.png")
        text = output.text
        family = max((c.family for c in build_report([folder / "runs"]).comparisons), default=0)
        table = settings_table(folder)
        adjusted = sum(bool(line.split("|")[7].strip()) for line in table.splitlines()[2:])
        if "**Runs, sorted" in text and "**Seed groups" in text:  # the 50-row table of runs stays in results.md
            text = text[: text.index("**Runs, sorted")] + text[text.index("**Seed groups") :]
        if "**Where each run was best" in text:  # per run too: in results.md
            text = text[: text.index("**Where each run was best")].rstrip()
        for curve in folder.glob("*-curve.png"):
            shutil.copy(curve, IMAGES / f"study-{label}-{curve.name}")
        print(
            f"## {label}\n\n{wall_time(folder)}\n\n{regime(folder)}\n\n### Every setting against the baseline\n\n"
            f"Holm over the {adjusted} settings with a p (the baselines against each other included).\n\n{table}\n\n"
            f"### As `flood compare --markdown` prints it\n\nIts verdicts are Holm-adjusted over the {family} "
            f"comparisons of its table (baselines are not compared with each other there).\n\n{text}\n\n"
            f"### Calibration at the best evaluation\n\n{diagnostics(folder)}\n"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
