"""studies/report.py, the tables of docs/study.md: each setting against the baseline of
its optimizer, its paired p and Holm's adjustment, recomputed here by closed forms."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import ROOT
from tests.run_factory import write_run

spec = importlib.util.spec_from_file_location("study_report", ROOT / "studies" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

BASELINE = {1: 0.30, 2: 0.20, 3: 0.25}
SETTINGS = {  # name: (best val loss per seed, config)
    "baseline": (BASELINE, {}),
    "flooding-b0.1": ({1: 0.29, 2: 0.18, 3: 0.19}, {"mode": "flooding", "b": 0.1}),
    "baseline-optimizer=sgd-lr0.2": ({1: 0.31, 2: 0.22, 3: 0.24}, {"lr": 0.2, "train": {"optimizer": "sgd"}}),
    "backstitch-lr0.2": ({1: 0.29, 2: 0.18, 3: 0.21}, {"mode": "backstitch", "lr": 0.2}),
}


def p_two_sided_df2(differences: list[float]) -> float:
    """Paired t test with 3 seeds (df 2): P(T ≤ t) = 1/2 + t / (2√(2 + t²))."""
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t = abs(mean) / (sd / math.sqrt(3))
    return 1 - t / math.sqrt(2 + t * t)


def test_each_setting_is_paired_with_its_baseline_and_its_p_adjusted(tmp_path):
    runs = tmp_path / "sweep" / "runs"
    for name, (bests, config) in SETTINGS.items():
        for seed, best in bests.items():
            write_run(runs, f"{name}-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed, **config)
    rows = {}
    for line in report.settings_table(tmp_path / "sweep").splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    against = {name: cells[3] for name, cells in rows.items()}
    assert against == {"baseline": "", "flooding-b0.1": "baseline", "baseline-optimizer=sgd-lr0.2": "baseline",
                       "backstitch-lr0.2": "baseline-optimizer=sgd-lr0.2"}

    def differences(name: str, reference: str) -> list[float]:
        return [SETTINGS[name][0][s] - SETTINGS[reference][0][s] for s in (1, 2, 3)]

    p = {
        "flooding-b0.1": p_two_sided_df2(differences("flooding-b0.1", "baseline")),
        "baseline-optimizer=sgd-lr0.2": p_two_sided_df2(differences("baseline-optimizer=sgd-lr0.2", "baseline")),
        "backstitch-lr0.2": p_two_sided_df2(differences("backstitch-lr0.2", "baseline-optimizer=sgd-lr0.2")),
    }
    ordered = sorted(p, key=p.get)  # Holm by hand: k·p, (k−1)·p, …, kept non-decreasing
    holm, running = {}, 0.0
    for rank, name in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p[name]))
        holm[name] = running
    for name in p:
        assert float(rows[name][5]) == pytest.approx(p[name], abs=5e-4), name
        assert float(rows[name][6]) == pytest.approx(holm[name], abs=5e-4), name
    assert rows["backstitch-lr0.2"][4] == "-0.0300" and rows["flooding-b0.1"][4] == "-0.0300"
    assert rows["baseline"][2] == "0.2500 ± 0.0500" and rows["baseline"][10] == "600 s"
    assert holm["backstitch-lr0.2"] == pytest.approx(3 * p["backstitch-lr0.2"])  # the smallest p, times 3
    assert report.regime(tmp_path / "sweep") == (
        "Regime check: the baseline's best evaluation is its last in 0 of 3 runs; "
        "its last evaluation is +0.0200 above its best on average (reached)."
    )


def test_the_diagnostics_read_each_runs_best_evaluation(tmp_path):
    """Best epoch, training loss there, runs where loss and accuracy rose together, and
    the last evaluation above the best: on two hand-made curves, worked out by hand."""
    runs = tmp_path / "sweep" / "runs"
    write_run(runs, "baseline-s1", seed=1, val_losses=(0.5, 0.4, 0.45, 0.47), val_accuracies=(0.80, 0.82, 0.85, 0.84),
              train_losses=(0.6, 0.3, 0.2, 0.1))  # best at epoch 2; 2 → 3: loss ↑ and accuracy ↑
    write_run(runs, "baseline-s2", seed=2, val_losses=(0.5, 0.45, 0.40, 0.42), val_accuracies=(0.80, 0.81, 0.83, 0.82),
              train_losses=(0.6, 0.4, 0.25, 0.2))  # best at epoch 3; 3 → 4: loss ↑, accuracy ↓
    (row,) = report.diagnostics(tmp_path / "sweep").splitlines()[2:]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["baseline", "2", "2.5", f"{(0.3 + 0.25) / 2:.3f}"]
    assert cells[6:] == ["1 of 2", f"{((0.47 - 0.40) + (0.42 - 0.40)) / 2:+.4f}"]
    assert cells[4] == "nan"  # no val_ece column in these runs: shown as missing, not as 0


def test_the_compare_table_of_the_report_has_holm_verdicts(tmp_path, monkeypatch, capsys):
    """backstitch against its SGD control: paired p 0.035 alone (lower), but with the
    flooding comparison beside it Holm makes it 2 × 0.035 = 0.070: within seed noise, as
    the study's own Holm column says. The compare table printed in the report agrees."""
    runs = tmp_path / "spam" / "runs"
    for name, (bests, config) in SETTINGS.items():
        for seed, best in bests.items():
            write_run(runs, f"{name}-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed, **config)
    monkeypatch.setattr(report, "IMAGES", tmp_path / "img")
    report.main([str(tmp_path / "spam")])
    printed = capsys.readouterr().out
    backstitch = [SETTINGS["backstitch-lr0.2"][0][s] - SETTINGS["baseline-optimizer=sgd-lr0.2"][0][s] for s in (1, 2, 3)]
    flooding = [SETTINGS["flooding-b0.1"][0][s] - BASELINE[s] for s in (1, 2, 3)]
    p_back, p_flood = p_two_sided_df2(backstitch), p_two_sided_df2(flooding)
    assert p_back < 0.05 < 2 * p_back and p_flood > 2 * p_back  # Holm over the 2 comparisons of compare's table
    tables = printed[printed.index("**Seed groups"):printed.index("### Calibration")]
    assert "lower (better)" not in tables and tables.count("| within seed noise (paired) |") == 2
    compare_part = printed[printed.index("### As `flood compare --markdown` prints it"):]
    assert "Its verdicts are Holm-adjusted over the 2 comparisons of its table" in compare_part
    (row,) = [line for line in compare_part.splitlines() if line.startswith("| g")
              and "(paired)" in line and f"| {p_back:.3f} |" in line]
    assert f"| {p_back:.3f} | {2 * p_back:.3f} | within seed noise (paired) |" in row
    assert "Holm over the 3 settings with a p" in printed
