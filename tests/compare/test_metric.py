"""flood compare --metric: groups judged on an optional metric (train.metrics) instead of
the validation loss; the best of a run is its highest value where higher is better."""

from __future__ import annotations

import pytest

from flood_cli.cli.main import app
from flood_cli.compare.command import judged_metric
from flood_cli.compare.model import LOSS, Judged
from flood_cli.core.errors import FloodError
from tests.compare.helpers import compare, report_of, runner
from tests.run_factory import write_run

# Per seed: the val_f1_macro curve of three evaluations. Flooding has the higher F1 on
# every seed (by 0.10, 0.12, 0.11 at the best) but the higher loss too.
BASELINE_F1 = {1: (0.70, 0.72, 0.71), 2: (0.69, 0.71, 0.70), 3: (0.71, 0.73, 0.72)}
FLOODING_F1 = {1: (0.80, 0.82, 0.81), 2: (0.79, 0.83, 0.80), 3: (0.81, 0.84, 0.82)}


def write_groups(root, lacking: tuple[str, ...] = ()):
    for seed, curve in BASELINE_F1.items():
        extra = {} if f"base-s{seed}" in lacking else {"val_f1_macro": curve}
        write_run(root, f"base-s{seed}", val_losses=(0.30, 0.25 + 0.01 * seed, 0.30), seed=seed, extra_columns=extra)
    for seed, curve in FLOODING_F1.items():
        write_run(root, f"flood-s{seed}", val_losses=(0.40, 0.31 + 0.013 * seed, 0.40), seed=seed, mode="flooding", b=0.1,
                  extra_columns={"val_f1_macro": curve})


def test_metric_names():
    assert judged_metric("loss") == judged_metric("val_loss") == LOSS
    assert judged_metric("f1_macro") == judged_metric("val_f1_macro") == Judged("val_f1_macro", higher_is_better=True)
    assert judged_metric("accuracy") == Judged("val_accuracy", higher_is_better=True)
    with pytest.raises(FloodError) as excinfo:
        judged_metric("f1")
    assert str(excinfo.value) == "--metric 'f1' is not a metric; use loss, accuracy or one of f1_macro, f1_weighted, auroc, auprc, mcc"


def test_groups_are_judged_on_the_metric_highest_best(tmp_path):
    write_groups(tmp_path)
    by_loss = report_of([tmp_path])
    assert [group.label.split()[0] for group in by_loss.groups][0] == "baseline"  # the lower loss
    assert by_loss.comparisons[0].verdict == "higher (worse)"

    report = report_of([tmp_path], judged=judged_metric("f1_macro"))
    assert report.judged == Judged("val_f1_macro", True)
    assert [run.name for run in report.runs][:3] == ["flood-s3", "flood-s2", "flood-s1"]  # highest first
    assert {run.name: run.score for run in report.runs} == {
        "base-s1": 0.72, "base-s2": 0.71, "base-s3": 0.73, "flood-s1": 0.82, "flood-s2": 0.83, "flood-s3": 0.84,
    }
    flooding = report.groups[0]
    assert flooding.mode == "flooding" and flooding.sample.mean == pytest.approx(0.83)
    (comparison,) = report.comparisons
    assert comparison.difference == pytest.approx(0.11)  # group − baseline, as for the loss
    assert comparison.paired_differences == pytest.approx([0.10, 0.12, 0.11])
    assert comparison.paired.low > 0
    assert comparison.verdict == "higher (better)"
    run = next(run for run in report.runs if run.name == "flood-s2")
    assert run.diff_to_baseline == pytest.approx(0.83 - 0.72) and run.paired_diff_to_baseline == pytest.approx(0.12)


def test_the_tables_say_which_metric(tmp_path):
    write_groups(tmp_path)
    text = compare([tmp_path], metric="f1_macro", markdown=True).text
    assert "Runs, sorted by best val_f1_macro (higher is better)" in text
    assert "Seed groups: best val_f1_macro (higher is better) of runs that differ only by seed" in text
    assert "Against the baseline: best val_f1_macro (higher is better), group − baseline (95% intervals)" in text
    assert "| best val_f1_macro |" in text and "| final val_f1_macro |" in text
    assert "Higher val_f1_macro is better." in text
    assert "higher (better) (paired)" in text
    assert "validation loss" not in text.split("Where each run was best")[0]


def test_a_run_without_the_metric_is_listed_and_left_out(tmp_path):
    write_groups(tmp_path, lacking=("base-s3",))
    output = compare([tmp_path], metric="f1_macro")
    assert "base-s3: no val_f1_macro column (trained without train.metrics: [f1_macro]); listed, left out of the statistics" in output.warnings
    report = report_of([tmp_path], judged=judged_metric("f1_macro"))
    baseline = next(group for group in report.groups if group.mode == "baseline")
    assert baseline.n_seeds == 2 and baseline.left_out == 1


def test_no_run_with_the_metric_is_one_line_and_exit_1(tmp_path):
    write_run(tmp_path, "base-s1", seed=1)
    result = runner.invoke(app, ["compare", str(tmp_path), "--metric", "auroc"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: --metric auroc: no run has a val_auroc column in its metrics.csv; train with train.metrics: [auroc] "
        "to compare on it, or leave --metric out to compare on val_loss"
    )
    result = runner.invoke(app, ["compare", str(tmp_path), "--metric", "nope"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --metric 'nope' is not a metric; use loss, accuracy or one of f1_macro, f1_weighted, auroc, auprc, mcc"


def test_json_names_the_metric(tmp_path):
    import json

    write_groups(tmp_path)
    document = json.loads(compare([tmp_path], metric="f1_macro", as_json=True).text)
    assert document["metric"] == "val_f1_macro"
    assert document["groups"][0]["best_val_f1_macro_mean"] == pytest.approx(0.83)
    assert "best_val_loss_mean" not in document["groups"][0]
    run = document["runs"][0]
    assert (run["name"], run["best_val_f1_macro"], run["best_val_loss"]) == ("flood-s3", 0.84, pytest.approx(0.349))
    assert "metric" not in json.loads(compare([tmp_path], as_json=True).text)
