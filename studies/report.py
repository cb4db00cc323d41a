"""Figures and tables of docs/study.md from the study's sweep folders.

    .venv/bin/python studies/report.py runs/studies/spam-clean runs/studies/spam-noisy

For each sweep: the grouped table (flood compare --markdown: mean ± sd over seeds, each
setting against the baseline with Welch and paired 95 % intervals), the b-curve, the
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

from flood_cli.compare import compare_command

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "img"


def rows_of(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def diagnostics(folder: Path) -> str:
    """Per setting: at each run's best-loss evaluation, ECE, confidently wrong count,
    the epoch; and how many runs had evaluations where loss and accuracy rose together."""
    by_setting: dict[str, list[Path]] = {}
    for run in sorted((folder / "runs").iterdir()):
        if run.name.startswith(".") or not (run / "summary.json").exists():
            continue
        if json.loads((run / "summary.json").read_text()).get("status") != "completed":
            continue
        by_setting.setdefault(run.name.rsplit("-s", 1)[0], []).append(run)
    lines = [
        "| setting | runs | best epoch (mean) | ECE at best | confidently wrong at best (of the validation set) | runs with loss ↑ and accuracy ↑ | last-epoch val loss − best |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for setting, runs in by_setting.items():
        bests, eces, wrongs, rising, gaps = [], [], [], 0, []
        for run in runs:
            rows = rows_of(run)
            best = min(rows, key=lambda row: row["val_loss"])
            bests.append(best["epoch"])
            eces.append(best.get("val_ece", float("nan")))
            wrongs.append(best.get("val_confident_wrong", float("nan")))
            gaps.append(rows[-1]["val_loss"] - best["val_loss"])
            rising += any(
                b["val_loss"] > a["val_loss"] and b["val_accuracy"] > a["val_accuracy"] for a, b in zip(rows, rows[1:])
            )
        lines.append(
            f"| {setting} | {len(runs)} | {statistics.mean(bests):.1f} | {statistics.mean(eces):.4f} | "
            f"{statistics.mean(wrongs):.1f} | {rising} of {len(runs)} | {statistics.mean(gaps):+.4f} |"
        )
    return "\n".join(lines)


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
        for curve in folder.glob("*-curve.png"):
            shutil.copy(curve, IMAGES / f"study-{label}-{curve.name}")
        print(f"## {label}\n\n{wall_time(folder)}\n\n{output.text}\n\n### Calibration at the best evaluation\n\n{diagnostics(folder)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
