"""flood compare's seed groups and baselines: groups, labels, the baseline chosen, the
differences and their verdicts; what compare flags (still improving, replicates that
disagree, an unfinished baseline).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone

import pytest

from flood_cli.compare.command import build_report
from flood_cli.compare.stats import NO_SPREAD, ONE_SEED
from tests.compare.helpers import NOW, compare, report_of, write_readme_seeds, write_seed_group
from tests.run_factory import write_run

# ---------------------------------------------------------------------------
# Groups, baselines and the honest differences


def test_runs_that_differ_only_by_seed_form_a_group(tmp_path):
    write_run(tmp_path, "a", seed=1)
    write_run(tmp_path, "b", seed=2, precision="bf16", train={"eval_batch_size": 64})  # how, not what
    write_run(tmp_path, "c", seed=3, lr=1e-5)
    write_run(tmp_path, "d", seed=4, train={"batch_size": 16})
    groups = report_of([tmp_path]).groups
    assert sorted(sorted(run.name for run in group.runs) for group in groups) == [["a", "b"], ["c"], ["d"]]
    assert sorted(group.label for group in groups) == [
        "baseline lr=1e-05 batch_size=32",
        "baseline lr=2e-05 batch_size=16",
        "baseline lr=2e-05 batch_size=32",
    ]


def test_groups_against_the_baseline_with_interval_and_verdict(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.8100, 0.8142, 0.8200])
    write_seed_group(tmp_path, "flood-b0.5", [0.7968, 0.7990], mode="flooding", b=0.5)
    write_seed_group(tmp_path, "flood-b0.7", [0.8090, 0.8180, 0.8120], mode="flooding", b=0.7)
    report = report_of([tmp_path], rule="raw")  # each alone; Holm's adjustment: see test_holm_*
    verdicts = {c.group.label: (c.baseline.label, c.verdict) for c in report.comparisons}
    assert verdicts == {
        "flooding b=0.5 lr=2e-05": ("baseline lr=2e-05", "lower (better)"),
        "flooding b=0.7 lr=2e-05": ("baseline lr=2e-05", "within seed noise"),
    }
    b05 = next(c for c in report.comparisons if c.group.label.startswith("flooding b=0.5"))
    assert b05.difference == pytest.approx((0.7968 + 0.7990) / 2 - (0.8100 + 0.8142 + 0.8200) / 3)
    assert b05.interval.low < b05.difference < b05.interval.high < 0
    assert b05.interval.method == "welch" and b05.notes == []


def test_single_seed_runs_say_there_is_no_noise_estimate(tmp_path):
    # The table users post: one seed each.
    for name, best, config in [
        ("baseline", 0.814198, {}),
        ("flood-b0.7", 0.809810, {"mode": "flooding", "b": 0.7}),
        ("alternate", 0.783370, {"mode": "alternate", "lr": 1e-5, "ascent_lr": 1e-6}),
    ]:
        write_run(tmp_path, name, val_losses=(best + 0.01, best), **config)
    output = compare([tmp_path])
    report = report_of([tmp_path])
    assert {c.verdict for c in report.comparisons} == {"one seed per group: no noise estimate"}
    assert "-0.0044 (-0.54%)" in output.text  # 0.809810 vs 0.814198
    assert "one seed per group: no noise estimate" in output.text


def test_runs_that_share_a_seed_count_once_with_their_mean(tmp_path):
    write_run(tmp_path, "base-s1", val_losses=(0.85, 0.80), seed=1)
    write_run(tmp_path, "base-s1-again", val_losses=(0.85, 0.82), seed=1)  # a repeat, e.g. on another GPU
    write_run(tmp_path, "base-s2", val_losses=(0.85, 0.90), seed=2)
    (group,) = report_of([tmp_path]).groups
    assert (group.sample.n, group.counted_runs) == (2, 3)
    assert sorted(group.sample.values) == pytest.approx([0.81, 0.85])
    prose = " ".join(compare([tmp_path]).text.split())  # footnotes wrap in the terminal
    assert "Runs that share a seed are replicates, not independent seeds: each seed counts once, " \
        "as the mean of its runs (g1 seed 1 ×2)." in prose


def test_repeats_of_one_seed_are_one_seed_not_a_zero_noise_estimate(tmp_path):
    """The runs of /tmp/r5: all seed 42; base repeated; b = 0 flooding equals the baseline."""
    for name in ("base", "base2"):
        write_run(tmp_path, name, val_losses=(0.8161, 0.8564), seed=42)
    write_run(tmp_path, "b0", val_losses=(0.8161, 0.8564), seed=42, mode="flooding", b=0.0)
    write_run(tmp_path, "bhigh", val_losses=(0.6627, 0.6775), seed=42, mode="flooding", b=5.0)
    report = report_of([tmp_path])
    baseline = next(group for group in report.groups if group.is_baseline)
    assert (baseline.sample.n, baseline.sample.sd, baseline.counted_runs) == (1, None, 2)
    assert [(c.interval, c.verdict) for c in report.comparisons] == [(None, ONE_SEED), (None, ONE_SEED)]
    text = compare([tmp_path]).text
    assert "[-0.1534, -0.1534]" not in text and "[+0.0000, +0.0000]" not in text
    assert "g3 (1 seed)      1  -0.1534 (-18.80%)" in text


def test_seeds_without_spread_give_no_verdict(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.81, 0.81])  # two seeds, the very same best loss
    write_seed_group(tmp_path, "flood", [0.79], mode="flooding", b=0.5)
    (comparison,) = report_of([tmp_path]).comparisons
    assert (comparison.interval, comparison.verdict) == (None, NO_SPREAD)
    assert comparison.difference == pytest.approx(-0.02)
    text = compare([tmp_path]).text
    assert "no seed spread to estimate noise" in text and "[-0.0200, -0.0200]" not in text
    document = json.loads(compare([tmp_path], as_json=True).text)
    assert {key: document["comparisons"][0][key] for key in ("ci_low", "ci_high", "method", "verdict")} == {
        "ci_low": None, "ci_high": None, "method": None, "verdict": NO_SPREAD,
    }


def test_comparison_notes_are_numbered_footnotes_printed_once(tmp_path):
    write_seed_group(tmp_path, "base-lr2", [0.81, 0.83], lr=2e-5)
    write_seed_group(tmp_path, "base-lr1", [0.80, 0.82, 0.81], lr=1e-5)
    write_seed_group(tmp_path, "flood", [0.79], mode="flooding", b=0.5)
    write_seed_group(tmp_path, "flood-b0.7", [0.795, 0.80], mode="flooding", b=0.7)
    lines = compare([tmp_path]).text.splitlines()
    start = lines.index("Against the baseline: best validation loss, group − baseline (95% intervals)")
    table = lines[start:lines.index("", start + 5)]
    assert table[2].split() == ["group", "baseline", "seeds", "Δ", "of", "means", "95%", "interval", "method", "paired", "Δ",
                                "paired", "seeds", "95%", "paired", "interval", "p", "verdict", "notes"]
    assert table[4].endswith("one seed: no noise estimate of its own  [1] [2]")
    assert table[5].split()[-5:] == ["within", "seed", "noise", "(paired)", "[2]"]
    footnotes = [line for line in lines[start + len(table):] if line.startswith("[")][:2]
    assert footnotes == [
        "[1] one seed in g1: it has no seed noise of its own to judge by, so no verdict; the interval borrows",
        "[2] baseline groups g3, g4 match; chose g4: closest training settings, then most seeds",
    ]


def test_without_notes_there_is_no_notes_column(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.81, 0.82])
    write_seed_group(tmp_path, "flood", [0.79, 0.805], mode="flooding", b=0.5)
    text = compare([tmp_path]).text
    assert " Welch, df " in text and "notes" not in text


def test_the_closest_of_several_baselines_is_chosen_and_named(tmp_path):
    write_seed_group(tmp_path, "base-lr2", [0.81], lr=2e-5)
    write_seed_group(tmp_path, "base-lr1", [0.80, 0.82, 0.81], lr=1e-5)
    write_seed_group(tmp_path, "flood", [0.79], mode="flooding", b=0.5, lr=2e-5)
    (comparison,) = report_of([tmp_path]).comparisons
    assert comparison.baseline.label == "baseline lr=2e-05"
    assert comparison.notes == [
        f"baseline groups g2, g3 match; chose {comparison.baseline.id}: closest training settings, then most seeds"
    ]


def test_backstitch_is_set_beside_an_sgd_baseline_and_the_rest_beside_adamw(tmp_path):
    """Backstitch is plain SGD: its baseline is the SGD one at its lr, not AdamW's (which
    would mix the optimizer's effect into backstitch's); AdamW modes keep AdamW's."""
    write_seed_group(tmp_path, "baseline", [0.20, 0.21, 0.22], lr=5e-5)  # more seeds: wins a tie
    write_seed_group(tmp_path, "baseline-sgd", [0.18, 0.19], lr=0.2, train={"optimizer": "sgd"})
    write_seed_group(tmp_path, "backstitch", [0.17, 0.18], mode="backstitch", lr=0.2, train={"backstitch": {"scale": 0.3, "interval": 1}})
    write_seed_group(tmp_path, "flood", [0.19, 0.20], mode="flooding", b=0.1, lr=5e-5)
    chosen = {c.group.label: c.baseline.label for c in report_of([tmp_path]).comparisons}
    assert chosen == {
        "backstitch lr=0.2 interval=1 scale=0.3": "baseline lr=0.2 optimizer=sgd",
        "flooding b=0.1 lr=5e-05": "baseline lr=5e-05",
    }


def test_no_baseline_of_other_data_or_model(tmp_path):
    write_run(tmp_path, "base", model={"name_or_path": "bert-base-uncased", "tiny": None, "tokenizer": None})
    write_run(tmp_path, "flood", mode="flooding", b=0.5)
    report = report_of([tmp_path])
    assert report.comparisons == [] and all(run.diff_to_baseline is None for run in report.runs)
    assert "No baseline of the same model and data" in compare([tmp_path]).text


def test_runs_sorted_by_best_loss_with_diverged_runs_last(tmp_path):
    write_run(tmp_path, "mid", val_losses=(0.7, 0.6), seed=1)
    write_run(tmp_path, "diverged", val_losses=(float("nan"), float("nan")), seed=2)
    write_run(tmp_path, "low", val_losses=(0.5, 0.55), seed=3)
    report = report_of([tmp_path])
    assert [run.name for run in report.runs] == ["low", "mid", "diverged"]
    assert report.groups[0].sample.n == 2  # the diverged run has no best loss to average


def test_a_key_that_older_runs_lack_still_tells_groups_apart(tmp_path):
    """A config written before a key existed (here train.ascent_optimizer) differs from
    one that has it: the labels say so instead of numbering look-alike groups."""
    write_run(tmp_path, "old", mode="alternate", lr=1e-3, ascent_lr=1e-4)
    write_run(tmp_path, "new", mode="alternate", lr=1e-3, ascent_lr=1e-4, train={"ascent_optimizer": "separate"})
    labels = sorted(group.label for group in build_report([tmp_path]).groups)
    assert labels == ["alternate lr=0.001 alr=0.0001", "alternate lr=0.001 alr=0.0001 ascent_optimizer=separate"]


# ---------------------------------------------------------------------------
# What compare flags: still improving, replicates that disagree, an unfinished baseline


def test_a_run_still_improving_at_its_last_evaluation_is_flagged(tmp_path):
    write_readme_seeds(tmp_path)
    write_run(tmp_path, "flood-s4", val_losses=(0.30, 0.25, 0.20), seed=4, mode="flooding", b=0.1)
    write_run(tmp_path, "base-s4", val_losses=(0.30, 0.25, 0.26), seed=4)
    text = compare([tmp_path]).text
    assert " flood-s4  g1     flooding  0.1  2e-05                4       3         0.2000" in text
    runs_line = next(line for line in text.splitlines() if line.startswith(" flood-s4"))
    assert runs_line.endswith("  completed †")
    where_line = [line for line in text.splitlines() if line.startswith(" flood-s4")][1]
    assert where_line.startswith(" flood-s4  3 (300): 0.2000 †")
    prose = " ".join(text.split())
    assert ("† best val_loss at the last evaluation: the run was still improving when it stopped, its best is not "
            "reached; a verdict on it is premature (train longer).") in prose
    assert ("[1] still improving at the last evaluation, best not reached: flood-s4 (†); the verdict is premature: "
            "train longer") in prose
    document = json.loads(compare([tmp_path], as_json=True).text)
    assert [run["name"] for run in document["runs"] if run["still_improving"]] == ["flood-s4"]
    assert document["comparisons"][0]["still_improving"] == ["flood-s4"]
    assert "flood-s3" not in document["comparisons"][0]["note"]


def test_a_run_with_one_evaluation_or_a_later_tie_is_not_still_improving(tmp_path):
    write_run(tmp_path, "one", val_losses=(0.5,), epochs=1, seed=1)
    write_run(tmp_path, "tie", val_losses=(0.6, 0.5, 0.5), seed=2)
    assert [run.still_improving for run in report_of([tmp_path]).runs] == [False, False]
    assert "†" not in compare([tmp_path]).text


def test_a_run_that_stopped_early_is_marked_and_never_still_improving(tmp_path):
    """Early stopping with min_delta 0.1 ends a run whose last val_loss (0.24) is its
    lowest, as it is not 0.1 below the best before it: it stopped because it no longer
    improved, so it is not "still improving" (†) but stopped early (‡)."""
    csv_path = tmp_path / "out.csv"
    runs = tmp_path / "runs"
    stopped = {"stopped_early": True, "stopped_at_step": 300}
    write_run(runs, "early", val_losses=(0.30, 0.25, 0.24), seed=1, summary_fields=stopped)
    write_run(runs, "full", val_losses=(0.30, 0.25, 0.26), seed=2, summary_fields={"stopped_early": False})
    assert [(run.name, run.stopped_at_step, run.still_improving) for run in report_of([runs]).runs] == [
        ("early", 300, False), ("full", None, False)]
    text = compare([runs], csv_path=csv_path).text
    assert next(line for line in text.splitlines() if line.startswith(" early")).endswith("  completed ‡")
    assert next(line for line in text.splitlines() if line.startswith(" full")).endswith("  completed")
    assert "† " not in text
    assert "‡ stopped early (train.early_stopping): early at step 300." in " ".join(text.split())
    assert "‡ stopped early (train.early_stopping): early at step 300." in compare([runs], markdown=True).text
    document = json.loads(compare([runs], as_json=True).text)
    assert [(run["name"], run["stopped_early"], run["stopped_at_step"]) for run in document["runs"]] == [
        ("early", True, 300), ("full", False, None)]
    with open(csv_path, newline="") as handle:
        assert [(row["name"], row["stopped_at_step"]) for row in csv.DictReader(handle)] == [("early", "300"), ("full", "")]


def test_replicates_of_one_seed_that_disagree_are_warned_about(tmp_path):
    write_run(tmp_path, "base-s1", val_losses=(0.85, 0.80), seed=1)
    write_run(tmp_path, "base-s1-again", val_losses=(0.85, 0.82), seed=1)  # 2.4 % apart
    write_run(tmp_path, "base-s2", val_losses=(0.85, 0.90), seed=2)
    write_run(tmp_path, "base-s2-again", val_losses=(0.85, 0.9000001), seed=2)  # float noise
    output = compare([tmp_path])
    assert output.warnings == [
        "base-s1, base-s1-again: replicates (same settings, seed 1; group g1) whose best val_loss disagree: "
        "0.8, 0.82, 2.44% apart, far beyond float noise (0.1%); averaged as one seed all the same. Something compare "
        "does not see differs (precision, device, code version) or training is nondeterministic"
    ]
    assert json.loads(compare([tmp_path], as_json=True).text)["warnings"] == output.warnings


def test_an_unfinished_baseline_is_named_instead_of_no_baseline(tmp_path):
    fresh = datetime.fromtimestamp(NOW - 60, timezone.utc).isoformat()
    write_run(tmp_path, "base-s1", val_losses=(0.85,), status="running", seed=1, summary_fields={"updated_at": fresh})
    write_run(tmp_path, "base-s2", val_losses=(0.85, 0.83), status="failed", seed=2)
    write_seed_group(tmp_path, "flood", [0.79, 0.80], mode="flooding", b=0.5)
    text = compare([tmp_path]).text
    prose = " ".join(text.split())
    assert "No baseline of the same model and data" not in text
    assert ("The baseline of the same model and data as g1 is g2 (baseline lr=2e-05: 1 failed, 1 running), with no "
            "complete run yet: no differences shown until one completes.") in prose
    # Without any baseline of that model and data the old sentence stays.
    write_run(tmp_path / "other", "base", model={"name_or_path": "bert-base-uncased", "tiny": None, "tokenizer": None})
    write_run(tmp_path / "other", "flood", mode="flooding", b=0.5)
    assert "No baseline of the same model and data among these runs" in compare([tmp_path / "other"]).text
