"""The study's backstitch rows after the L2 fix of 2026-12-03, for docs/study.md.

    .venv/bin/python studies/rerun_backstitch_report.py runs/studies/rerun-backstitch

Reads the rerun backstitch runs (studies/rerun-backstitch.sh) and sets them beside
what docs/study.md and docs/study-runs-*.md hold of the other settings, which the fix
does not touch: the SGD control's best validation loss per seed (paired differences),
and every other setting's paired p (Holm over the study's 9 settings, and over
compare's 8 comparisons, the SGD control being a baseline there). Prints, per study,
the new rows of the settings and diagnostics tables, the Holm column, and the
verdicts flood compare now gives by default. The p values read back from the
documents are rounded to 2-3 digits; the Holm values made from them carry that rounding.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flood_cli.compare.stats import Sample, difference_interval, holm_adjust, paired_interval, paired_p_value  # noqa: E402
from studies.report import diagnostics, mean_sd, p_text, rows_of  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
CONTROL = "baseline-optimizer=sgd-lr0.2"
SETTING = "backstitch-lr0.2"


def documented_controls(study: str) -> dict[int, float]:
    """The SGD control's best validation loss per seed, from the study's runs table."""
    values = {}
    for line in (DOCS / f"study-runs-{study}.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0].startswith(f"{CONTROL}-s") and len(cells) > 8:
            values[int(cells[6])] = float(cells[8])
    return values


def documented_settings_table(study: str) -> dict[str, list[str]]:
    """Rows of docs/study.md's 'Every setting against its baseline' table of a study."""
    text = (DOCS / "study.md").read_text()
    part = text.split("## Study 2")[0 if study == "clean" else 1]
    table = part[part.index("| setting | seeds | best val loss") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def main(folder: str) -> None:
    for study in ("clean", "noisy"):
        runs_dir = Path(folder) / f"spam-{study}"
        runs = {
            int(p.name.rsplit("-s", 1)[1]): p
            for p in sorted(runs_dir.glob(f"{SETTING}-s*"))
            if '"completed"' in (p / "summary.json").read_text()
        }
        if len(runs) < 2:
            print(f"## {study}: {len(runs)} completed backstitch run(s), too few to compare\n")
            continue
        rows = {seed: rows_of(run) for seed, run in runs.items()}
        best = {seed: min(r, key=lambda row: row["val_loss"]) for seed, r in rows.items()}
        controls = documented_controls(study)
        documented = documented_settings_table(study)
        old = documented[SETTING]
        seeds = sorted(best)
        differences = [best[s]["val_loss"] - controls[s] for s in seeds]
        p = paired_p_value(differences)
        interval = paired_interval(differences)
        print(f"## {study}: {len(seeds)} backstitch runs (seeds {seeds})\n")
        print("| seed | best val loss, before | after | SGD control | after − control |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        before = {}
        for line in (DOCS / f"study-runs-{study}.md").read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells and cells[0].startswith(f"{SETTING}-s") and len(cells) > 8:
                before[int(cells[6])] = float(cells[8])
        for s in seeds:
            print(f"| {s} | {before[s]:.4f} | {best[s]['val_loss']:.4f} | {controls[s]:.4f} | {best[s]['val_loss'] - controls[s]:+.4f} |")
        print()
        row = [
            SETTING, str(len(seeds)), mean_sd([b["val_loss"] for b in best.values()]), CONTROL,
            f"{statistics.mean(differences):+.4f}", p_text(p), "",
            mean_sd([b["val_accuracy"] for b in best.values()], 3),
            mean_sd([max(r["val_accuracy"] for r in rs) for rs in rows.values()], 3),
            mean_sd([rs[-1]["val_loss"] for rs in rows.values()]),
            old[-1] + " (before; the rerun ran beside other work)",
        ]
        print(f"before: {' | '.join(old)}")
        print(f"paired interval: [{interval.low:+.4f}, {interval.high:+.4f}], p {p:.4g}")
        values = [best[s]["val_loss"] for s in seeds]
        welch = difference_interval(Sample(tuple(values)), Sample(tuple(controls[s] for s in seeds)))
        mean_control = statistics.mean(controls[s] for s in seeds)
        delta = statistics.mean(values) - mean_control
        print(
            f"compare's group row: mean {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}, min {min(values):.4f}, "
            f"max {max(values):.4f}; Δ of means {delta:+.4f} ({100 * delta / mean_control:+.2f}%), Welch "
            f"[{welch.low:+.4f}, {welch.high:+.4f}], df {welch.df:.1f}, p {welch.p:.3g}; paired Δ {statistics.mean(differences):+.4f} "
            f"({100 * statistics.mean(differences) / mean_control:+.2f}%)"
        )
        improving = [s for s, rs in rows.items() if min(range(len(rs)), key=lambda i: rs[i]["val_loss"]) == len(rs) - 1]
        print(f"best at the last evaluation (still improving): seeds {improving}\n")
        # Holm over the study's 9 settings (the baseline has none).
        names = [n for n in documented if n != "baseline"]
        raw = [p if n == SETTING else float(documented[n][5]) for n in names]
        for name, value, holm in zip(names, raw, holm_adjust(raw), strict=True):
            mark = "  <- rerun" if name == SETTING else ""
            print(f"Holm (9): {name:32s} p {p_text(value):>8s}  Holm p {p_text(holm):>8s} (was {documented[name][6]}){mark}")
        row[6] = p_text(dict(zip(names, holm_adjust(raw), strict=True))[SETTING])
        print("\nnew row:\n| " + " | ".join(row) + " |\n")
        # flood compare's family: the 8 comparisons (the SGD control is a baseline group there).
        compared = [n for n in names if n != CONTROL]
        raw8 = [p if n == SETTING else float(documented[n][5]) for n in compared]
        for name, value, holm in zip(compared, raw8, holm_adjust(raw8), strict=True):
            delta = statistics.mean(differences) if name == SETTING else float(documented[name][4])
            side = "lower (better)" if delta < 0 else "higher (worse)"
            raw_verdict = side if value < 0.05 else "within seed noise"
            verdict = side if holm < 0.05 else "within seed noise"
            print(f"compare (8): {name:32s} raw p {p_text(value):>8s} -> {raw_verdict:18s} Holm p {p_text(holm):>8s} -> {verdict}")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "runs").symlink_to(runs_dir.resolve())
            print("\ndiagnostics (backstitch, and the control's one rerun seed):\n" + diagnostics(Path(tmp)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
