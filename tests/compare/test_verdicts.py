"""flood compare's verdicts: paired differences on shared seeds, one-seed groups, and
Holm's adjustment over many comparisons.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from flood_cli.cli.main import app
from flood_cli.compare.stats import student_t_quantile
from flood_cli.compare.tables import DIFF_SEED
from tests.compare.helpers import compare, report_of, runner, write_readme_seeds, write_seed_group
from tests.run_factory import write_run

# ---------------------------------------------------------------------------
# Paired differences: same seed, same data order and initialisation


def test_runs_show_the_difference_to_the_baseline_of_the_same_seed(tmp_path):
    write_readme_seeds(tmp_path)
    report = report_of([tmp_path])
    paired = {run.seed: run.paired_diff_to_baseline_pct for run in report.runs if run.mode == "flooding"}
    # The README's sentence: same-seed pairs range from -10.6 % to +28.7 %.
    assert paired == pytest.approx({1: 100 * 0.0305 / 0.1665, 2: 100 * 0.0364 / 0.1268, 3: -100 * 0.0240 / 0.2261})
    assert (round(min(paired.values()), 1), round(max(paired.values()), 1)) == (-10.6, 28.7)
    lines = compare([tmp_path]).text.splitlines()
    assert lines[2:6] == [
        " run       group  mode        b     lr  ascent_lr  seed  epochs  best val_loss  Δ vs baseline mean"
        "  Δ vs same-seed baseline  final val_loss  status",
        " " + "─" * 149,
        " base-s2   g1     baseline       2e-05                2       3         0.1268"
        "                                                       0.1468  completed",
        " flood-s2  g2     flooding  0.1  2e-05                2       3         0.1632    -0.0099 (-5.74%)"
        "        +0.0364 (+28.71%)          0.1832  completed",
    ]
    compare([tmp_path / "base-s2", tmp_path / "flood-s2"], csv_path=tmp_path / "table.csv")
    with open(tmp_path / "table.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert float(rows["flood-s2"]["paired_diff_to_baseline"]) == pytest.approx(0.0364)
    assert (rows["base-s2"]["paired_diff_to_baseline"], rows["flood-s2"]["still_improving"]) == ("", "False")
    prose = " ".join(compare([tmp_path]).text.split())
    assert "Δ vs baseline mean: best val_loss − the baseline group's mean over its seeds (and in % of that mean)." in prose
    assert ("Δ vs same-seed baseline: best val_loss − that of the baseline run with the same seed, same data order "
            "and initialisation (and in %): the paired difference") in prose


def test_the_comparison_has_a_paired_interval_and_its_verdict(tmp_path):
    write_readme_seeds(tmp_path)
    (comparison,) = report_of([tmp_path]).comparisons
    differences = [0.0305, 0.0364, -0.0240]
    mean, sd = sum(differences) / 3, math.sqrt(sum((d - sum(differences) / 3) ** 2 for d in differences) / 2)
    half = student_t_quantile(0.975, 2) * sd / math.sqrt(3)
    assert comparison.paired_seeds == [1, 2, 3]
    assert comparison.paired_differences == pytest.approx(differences)
    assert (comparison.paired.low, comparison.paired.high) == pytest.approx((mean - half, mean + half))
    assert (comparison.paired.method, comparison.paired.df) == ("paired", 2.0)
    assert (comparison.verdict, comparison.verdict_method, comparison.unpaired_verdict) == (
        "within seed noise", "paired", "within seed noise")
    text = compare([tmp_path]).text
    assert (" g2     g1 (3 seeds)      3  +0.0143 (+8.26%)  [-0.0922, +0.1208]  Welch, df 2.7  +0.0143 (+8.26%)"
            "             3  [-0.0684, +0.0970]   0.535  within seed noise (paired)") in text
    document = json.loads(compare([tmp_path], as_json=True).text)["comparisons"][0]
    assert {key: document[key] for key in ("verdict", "verdict_method", "paired_seeds", "n_paired", "paired_df")} == {
        "verdict": "within seed noise", "verdict_method": "paired", "paired_seeds": [1, 2, 3], "n_paired": 3, "paired_df": 2.0,
    }
    assert (document["paired_ci_low"], document["paired_ci_high"]) == pytest.approx((mean - half, mean + half))
    assert (document["ci_low"], document["method"]) == (pytest.approx(comparison.interval.low), "welch")  # kept


def test_a_consistent_paired_gain_is_seen_where_welch_sees_noise(tmp_path):
    """Seeds differ a lot from one another, but flooding is 0.010-0.015 lower on every seed."""
    write_readme_seeds(tmp_path, baseline={1: 0.80, 2: 0.90, 3: 1.00}, flooding={1: 0.79, 2: 0.888, 3: 0.985})
    (comparison,) = report_of([tmp_path]).comparisons
    assert comparison.unpaired_verdict == "within seed noise"
    assert (comparison.verdict, comparison.verdict_method) == ("lower (better)", "paired")
    assert comparison.paired.high < 0 < comparison.interval.high
    assert "lower (better) (paired)" in compare([tmp_path]).text


def test_one_shared_seed_gives_a_paired_difference_but_the_welch_verdict(tmp_path):
    write_readme_seeds(tmp_path, baseline={3: 0.80, 4: 0.82, 5: 0.81}, flooding={1: 0.79, 2: 0.80, 3: 0.785})
    (comparison,) = report_of([tmp_path]).comparisons
    assert comparison.paired_seeds == [3] and comparison.paired is None
    assert comparison.paired_difference == pytest.approx(-0.015)
    assert (comparison.verdict_method, comparison.verdict) == ("welch", comparison.unpaired_verdict)
    lines = compare([tmp_path]).text.splitlines()
    header = next(line for line in lines if line.startswith(" group  baseline"))
    assert "paired Δ" in header and "paired interval" not in header
    runs = {run.name: run.paired_diff_to_baseline for run in report_of([tmp_path]).runs}
    assert runs["flood-s3"] == pytest.approx(-0.015) and runs["flood-s1"] is None and runs["flood-s2"] is None


def test_the_same_difference_on_every_seed_says_why_there_is_no_paired_interval(tmp_path):
    write_readme_seeds(tmp_path, baseline={1: 0.80, 2: 0.82}, flooding={1: 0.79, 2: 0.81})
    (comparison,) = report_of([tmp_path]).comparisons
    assert comparison.paired is None and comparison.verdict_method == "welch"
    assert comparison.notes[0].startswith("g1 and g2 differ by the same -0.01 on each of seeds 1, 2: no paired interval;")


def test_no_shared_seed_no_paired_columns(tmp_path):
    write_readme_seeds(tmp_path, baseline={1: 0.80, 2: 0.82}, flooding={3: 0.79, 4: 0.80})
    text = compare([tmp_path]).text
    assert "paired" not in text.split("Where each run")[0].replace("paired difference", "")
    assert DIFF_SEED not in text
    (comparison,) = json.loads(compare([tmp_path], as_json=True).text)["comparisons"]
    assert (comparison["n_paired"], comparison["paired_ci_low"], comparison["verdict_method"]) == (0, None, "welch")


# ---------------------------------------------------------------------------
# One-seed groups, and many comparisons at once (Holm)


def test_a_one_seed_group_gets_no_better_or_worse_verdict(tmp_path):
    """A 3-seed baseline and flooding group from a sweep, and one run at b = 0.3: that run
    has no seed noise of its own. Its pooled interval leaves out 0 (borrowing the
    baseline's spread), yet no verdict rests on it, at 120 columns or in JSON."""
    write_seed_group(tmp_path, "baseline", [0.80, 0.82, 0.81])
    write_seed_group(tmp_path, "flooding-b0.1", [0.795, 0.815, 0.80], mode="flooding", b=0.1)
    write_seed_group(tmp_path, "flooding-b0.3", [0.70], mode="flooding", b=0.3)
    result = runner.invoke(app, ["compare", str(tmp_path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith(" g1 ") and "Δ" not in line and "(-" in line)
    assert "(better)" not in row and "(pooled)" not in row
    assert "one seed: no noise estimate of its own" in row
    prose = " ".join(result.stdout.split())
    assert "one seed in g1: it has no seed noise of its own to judge by, so no verdict" in prose
    document = json.loads(compare([tmp_path], as_json=True).text)
    one = next(c for c in document["comparisons"] if c["group"] == "g1")
    # The interval is kept as it was: pooled, s of the baseline, df 2, and it leaves out 0.
    half = student_t_quantile(0.975, 2) * 0.01 * math.sqrt(1 + 1 / 3)
    assert (one["ci_low"], one["ci_high"]) == pytest.approx((-0.11 - half, -0.11 + half))
    assert one["ci_high"] < 0 and one["method"] == "pooled"
    assert (one["verdict"], one["verdict_method"], one["p_value"], one["p_value_holm"]) == (
        "one seed: no noise estimate of its own", None, None, None)
    assert document["comparisons"][1]["holm_family"] == 1  # the one-seed group is not in the family


def write_holm_settings(root):
    """A baseline and three settings over seeds 1–3, with per-seed differences chosen so
    that the paired p are about 0.003, 0.035 and 0.8."""
    baseline = {1: 0.80, 2: 0.90, 3: 1.00}
    differences = {"b0.1": (-0.010, -0.011, -0.012), "b0.2": (-0.010, -0.015, -0.020), "b0.3": (0.010, -0.010, 0.005)}
    for seed, best in baseline.items():
        write_run(root, f"base-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed)
    for name, diffs in differences.items():
        for (seed, best), d in zip(baseline.items(), diffs, strict=True):
            write_run(root, f"flood-{name}-s{seed}", val_losses=(best + d + 0.05, best + d, best + d + 0.02), seed=seed,
                      mode="flooding", b=float(name[1:]))
    return differences


def p_df2(differences):
    """Paired t test on 3 differences (df 2): two-sided p = 1 − |t| / √(2 + t²)."""
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    t = mean / (sd / math.sqrt(3))
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_verdicts_are_holm_adjusted_over_the_comparisons_unless_raw(tmp_path):
    differences = write_holm_settings(tmp_path)
    p = {f"flooding b={name[1:]} lr=2e-05": p_df2(d) for name, d in differences.items()}
    ordered = sorted(p, key=p.get)  # Holm by hand: k·p, (k − 1)·p, …, kept non-decreasing
    holm, running = {}, 0.0
    for rank, label in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p[label]))
        holm[label] = running
    b1, b2, b3 = (f"flooding b={b} lr=2e-05" for b in ("0.1", "0.2", "0.3"))
    assert p[b1] < 0.05 / 3 and 0.025 < p[b2] < 0.05 and holm[b2] == pytest.approx(2 * p[b2]) and holm[b2] > 0.05

    document = json.loads(compare([tmp_path], as_json=True).text)
    labels = {g["id"]: g["label"] for g in document["groups"]}
    found = {labels[c["group"]]: c for c in document["comparisons"]}
    for label in p:
        assert found[label]["p_value"] == pytest.approx(p[label], rel=1e-9)
        assert found[label]["paired_p_value"] == pytest.approx(p[label], rel=1e-9)
        assert found[label]["p_value_holm"] == pytest.approx(holm[label], rel=1e-9)
        assert (found[label]["verdict_rule"], found[label]["holm_family"]) == ("holm", 3)
    assert {label: c["verdict"] for label, c in found.items()} == {
        b1: "lower (better)", b2: "within seed noise", b3: "within seed noise"}
    assert found[b2]["paired_ci_high"] < 0  # its interval leaves out 0: kept as it is

    raw = json.loads(compare([tmp_path], as_json=True, raw_verdicts=True).text)
    assert {labels[c["group"]]: c["verdict"] for c in raw["comparisons"]} == {
        b1: "lower (better)", b2: "lower (better)", b3: "within seed noise"}
    assert {labels[c["group"]]: c["p_value_holm"] for c in raw["comparisons"]} == pytest.approx(holm)

    text = compare([tmp_path]).text
    prose = " ".join(text.split())
    g2 = next(g for g, label in labels.items() if label == b2)
    assert (f"Verdicts: lower or higher when the Holm-adjusted p (Holm p) over the 3 comparisons in this table is below "
            f"0.05, else within seed noise; this keeps the chance of any false difference among them at 5% (judged "
            f"alone at 0.05 each: {1 - 0.95 ** 3:.0%}).") in prose
    assert (f"{g2}: its paired 95% interval leaves out 0 (p {p[b2]:.3f}), but not after Holm's adjustment for the 3 "
            f"comparisons made together (p {holm[b2]:.3f}): within seed noise") in prose
    row = next(line for line in text.splitlines() if line.startswith(f" {g2} ") and "(paired)" in line)
    assert f"  {p[b2]:.3f}   {holm[b2]:.3f}  within seed noise (paired)" in row
    raw_text = " ".join(compare([tmp_path], raw_verdicts=True).text.split())
    assert (f"not adjusted for the 3 comparisons made: if nothing differed, some false difference would show with "
            f"chance {1 - 0.95 ** 3:.0%}.") in raw_text

    # The CLI flag, and the p values in the CSV (each run carries its group's comparison).
    result = runner.invoke(app, ["compare", str(tmp_path), "--raw-verdicts", "--csv", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    assert "Verdicts (--raw-verdicts)" in " ".join(result.stdout.split())
    with open(tmp_path / "t.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert float(rows["flood-b0.2-s1"]["p_value"]) == pytest.approx(p[b2], rel=1e-9)
    assert float(rows["flood-b0.2-s3"]["p_value_holm"]) == pytest.approx(holm[b2], rel=1e-9)
    assert (rows["flood-b0.2-s1"]["verdict"], rows["flood-b0.2-s1"]["verdict_method"]) == ("lower (better)", "paired")
    assert (rows["base-s1"]["p_value"], rows["base-s1"]["verdict"]) == ("", "")


def test_welch_verdicts_are_holm_adjusted_too(tmp_path):
    """No shared seeds: Welch's p, from Student's t at Welch's df. Equal n = 3 and equal
    sd give df 4, where p = 1 − x(3 − x²)/2, x = |t|/√(4 + t²)."""
    write_seed_group(tmp_path, "baseline", [0.80, 0.83, 0.86])
    for seed, best in zip((11, 12, 13), (0.74, 0.77, 0.80), strict=True):  # −0.06 below the baseline's mean; −0.08 below
        write_run(tmp_path, f"a-s{seed}", val_losses=(best + 0.02, best, best + 0.01), seed=seed, mode="flooding", b=0.1)
    for seed, best in zip((11, 12, 13), (0.72, 0.75, 0.78), strict=True):
        write_run(tmp_path, f"b-s{seed}", val_losses=(best + 0.02, best, best + 0.01), seed=seed, mode="flooding", b=0.2)

    def welch_p(d):
        t = d / math.sqrt(2 * 0.03**2 / 3)
        x = abs(t) / math.sqrt(4 + t * t)
        return 1 - x * (3 - x * x) / 2

    p = {0.1: welch_p(-0.06), 0.2: welch_p(-0.08)}
    holm = {0.2: 2 * p[0.2], 0.1: max(2 * p[0.2], p[0.1])}
    document = json.loads(compare([tmp_path], as_json=True).text)
    b = {g["id"]: g["settings"].get("train.b") for g in document["groups"]}
    for c in document["comparisons"]:
        assert c["verdict_method"] == "welch" and c["df"] == pytest.approx(4.0)
        assert (c["p_value"], c["ci_p_value"], c["p_value_holm"]) == pytest.approx((p[b[c["group"]]], p[b[c["group"]]], holm[b[c["group"]]]), rel=1e-9)
        expected = "lower (better)" if holm[b[c["group"]]] < 0.05 else "within seed noise"
        assert c["verdict"] == expected
        raw = "lower (better)" if p[b[c["group"]]] < 0.05 else "within seed noise"
        assert c["unpaired_verdict"] == raw  # the interval's own verdict, not adjusted
    assert p[0.2] < 0.05 < holm[0.2]  # b = 0.2 (p 0.031) is lower alone, within noise after Holm (0.062)
    assert sorted((c["verdict"], c["unpaired_verdict"]) for c in document["comparisons"]) == [
        ("within seed noise", "lower (better)"), ("within seed noise", "within seed noise")]


def test_a_sweeps_results_md_holds_holm_verdicts_and_says_so(tmp_path):
    from flood_cli.sweep import driver as sweep_driver
    from flood_cli.sweep.spec import SweepSpec

    folder = tmp_path / "sweep"
    write_holm_settings(folder / "runs")
    spec = SweepSpec(name="holm", folder=str(folder), base={}, mode="flooding",
                           settings=[{"train.mode": "baseline"}, *({"train.mode": "flooding", "train.b": b} for b in (0.1, 0.2, 0.3))],
                           seeds=[1, 2, 3])
    sweep_driver.write_results(spec)
    results = " ".join((folder / "results.md").read_text().split())
    assert "Verdicts: lower or higher when the Holm-adjusted p (Holm p) over the 3 comparisons in this table" in results
    assert "| within seed noise (paired) | [1] |" in results  # b = 0.2: better alone, not after Holm
    assert results.count("| lower (better) (paired) |") == 1
