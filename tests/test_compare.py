"""`flood compare`: discovery, bad input, seed groups, statistics and output formats.

Every run folder here is hand-made by tests/run_factory.py; nothing is trained.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flood_cli.cli.main import app
from flood_cli.compare.command import build_report, compare_command
from flood_cli.compare.reader import parse_metrics
from flood_cli.compare.stats import NO_SPREAD, ONE_SEED, OUT_OF_RANGE, student_t_quantile
from flood_cli.compare.tables import CSV_COLUMNS, DIFF_SEED
from flood_cli.core.errors import FloodError
from flood_cli.runs.columns import METRICS_COLUMNS
from flood_cli.runs.folder import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_METRICS_BYTES,
    METRICS_FILE,
    SUMMARY_FILE,
)
from tests.conftest import ROOT
from tests.run_factory import make_rows, metrics_csv, write_run

NOW = datetime(2025, 1, 1, 0, 20, tzinfo=timezone.utc).timestamp()  # 10 min after the factory's updated_at


def compare(paths, **options):
    return compare_command([Path(p) for p in paths], now=NOW, **options)


def report_of(paths, **options):
    return build_report([Path(p) for p in paths], now=NOW, **options)


def write_seed_group(root, prefix, best_losses, **config):
    """One run per seed, each reaching the given best validation loss at epoch 2."""
    for seed, best in enumerate(best_losses, start=1):
        write_run(root, f"{prefix}-s{seed}", val_losses=(best + 0.02, best, best + 0.01), seed=seed, **config)


# ---------------------------------------------------------------------------
# metrics.csv parsing


HEADER = "epoch,step,val_loss,val_accuracy"


@pytest.mark.parametrize(
    ("text", "epochs", "problems"),
    [
        (f"{HEADER}\r\n1,10,0.5,0.8\r\n2,20,0.4,0.9\r\n", [1, 2], []),
        (f"{HEADER}\n1,10,0.5,0.8\n2,20,0.4,0.9", [1, 2], []),  # no final newline, but complete
        (f"{HEADER}\n1,10,0.5,0.8\n2,20,0.", [1], ["metrics.csv line 3 is cut short"]),
        (f"{HEADER}\n1,10,0.5,0.8\n2,20,abc,0.9\n3,30,0.6,0.9\n", [1, 3], ["metrics.csv has 1 unreadable row (line 3)"]),
        (f"{HEADER}\n1,10,0.5,0.8,7\n", [], ["metrics.csv has 1 unreadable row (line 2)"]),
        (f"{HEADER}\n1,10,,0.8\n", [], ["metrics.csv has 1 unreadable row (line 2)"]),  # no val_loss
        (f"{HEADER}\n1,10,nan,0.8\n", [1], []),  # a diverged run is still a run
        (f"{HEADER},phase\n1,10,0.5,0.8,warmup\n", [1], []),  # text in a column compare does not use
        (f"\ufeff{HEADER}\n1,10,0.5,0.8\n", [1], []),  # a byte-order mark from a spreadsheet
        (f"{HEADER}\n", [], []),
        ("", [], ["metrics.csv is empty"]),
        ("a,b\n1,2\n", [], ["metrics.csv has no epoch and val_loss columns"]),
    ],
)
def test_parse_metrics(text, epochs, problems):
    rows, found = parse_metrics(text)
    assert [row["epoch"] for row in rows] == epochs
    assert found == problems


# ---------------------------------------------------------------------------
# Discovery


def test_a_parent_folder_of_runs_is_expanded(tmp_path):
    write_seed_group(tmp_path / "runs", "baseline", [0.80, 0.81])
    (tmp_path / "runs" / "notes").mkdir()  # not a run: ignored inside a parent folder
    output = compare([tmp_path / "runs"])
    assert output.warnings == []
    assert "baseline-s1" in output.text and "baseline-s2" in output.text


def test_a_folder_of_sweeps_is_expanded_two_levels(tmp_path):
    write_seed_group(tmp_path / "runs" / "sweep-1", "baseline", [0.80])
    write_seed_group(tmp_path / "runs" / "sweep-2", "flooding", [0.79], mode="flooding", b=0.5)
    assert [run.name for run in report_of([tmp_path / "runs"]).runs] == ["flooding-s1", "baseline-s1"]


def test_quoted_glob_file_arguments_and_duplicates(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.80, 0.81, 0.82])
    report = report_of([tmp_path / "baseline-s*", tmp_path / "baseline-s1" / SUMMARY_FILE, tmp_path / "baseline-s1"])
    assert sorted(run.name for run in report.runs) == ["baseline-s1", "baseline-s2", "baseline-s3"]


def test_same_folder_names_under_different_parents_are_told_apart(tmp_path):
    write_run(tmp_path / "a", "run", seed=1)
    write_run(tmp_path / "b", "run", seed=2)
    assert sorted(run.name for run in report_of([tmp_path / "a" / "run", tmp_path / "b" / "run"]).runs) == ["a/run", "b/run"]


# ---------------------------------------------------------------------------
# Bad input: one warning line each, the rest compared


def test_folders_that_hold_no_runs_are_skipped_with_a_warning(tmp_path):
    write_run(tmp_path, "good")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes" / "drafts").mkdir(parents=True)
    (tmp_path / "notes" / "todo.txt").write_text("more seeds")
    output = compare([tmp_path / "good", tmp_path / "empty", tmp_path / "notes"])
    assert output.warnings == [
        f"{tmp_path / 'empty'}: an empty folder; skipped",
        f"{tmp_path / 'notes'}: no config.yaml, metrics.csv or summary.json in it or its subfolders; skipped",
    ]
    assert "good" in output.text


def test_missing_path_and_unmatched_glob_are_warnings(tmp_path):
    write_run(tmp_path, "good")
    output = compare([tmp_path / "good", tmp_path / "gone", tmp_path / "nothing-*"])
    assert output.warnings == [
        f"{tmp_path / 'gone'}: no such folder; skipped",
        f"{tmp_path / 'nothing-*'}: no file or folder matches; skipped",
    ]


def test_a_plain_file_is_not_a_run(tmp_path):
    write_run(tmp_path, "good")
    (tmp_path / "README.md").write_text("notes")
    output = compare([tmp_path / "good", tmp_path / "README.md"])
    assert output.warnings == [f"{tmp_path / 'README.md'}: a file, not a run folder; skipped"]


def test_run_in_progress_is_shown_as_incomplete(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.80, 0.82])
    fresh = datetime.fromtimestamp(NOW - 60, timezone.utc).isoformat()
    write_run(tmp_path, "flooding-live", val_losses=(0.79,), mode="flooding", b=0.5, status="running",
              summary_fields={"updated_at": fresh})
    output = compare([tmp_path])
    assert output.warnings == [
        f"{tmp_path / 'flooding-live'}: still running, at epoch 1 of 3; shown as incomplete, left out of seed statistics"
    ]
    report = report_of([tmp_path])
    live = next(run for run in report.runs if run.name == "flooding-live")
    assert (live.status, live.complete, live.best_val_loss) == ("running", False, 0.79)
    assert live.diff_to_baseline == pytest.approx(0.79 - 0.81)  # shown against the baseline as it stands
    assert report.comparisons == []  # but no statistics from an unfinished run
    assert "running 1/3 (incomplete)" in output.text
    prose = " ".join(output.text.split())
    assert "Runs left out of the statistics (incomplete, or no finite validation loss): g2 1." in prose


def test_run_marked_running_but_long_silent_may_have_been_killed(tmp_path):
    write_run(tmp_path, "stale", status="running", val_losses=(0.8,))
    output = compare_command([tmp_path / "stale"], now=NOW + 3 * 86400)
    assert output.warnings == [
        f"{tmp_path / 'stale'}: status running but not updated for 3 d (was it killed?), at epoch 1 of 3; "
        "shown as incomplete, left out of seed statistics"
    ]


def test_truncated_metrics_keep_the_good_rows(tmp_path):
    path = write_run(tmp_path, "cut", val_losses=(0.7, 0.6, 0.65))
    text = (path / METRICS_FILE).read_bytes()
    last_row_start = text.rindex(b"\r\n", 0, len(text) - 2) + 2
    (path / METRICS_FILE).write_bytes(text[: last_row_start + 12])  # killed in the middle of a row
    output = compare([path])
    assert output.warnings == [f"{path}: metrics.csv line 4 is cut short; kept 2 readable evaluations"]
    run = report_of([path]).runs[0]
    assert [row["val_loss"] for row in run.rows] == [0.7, 0.6]
    assert run.complete  # the summary says completed: only the file is damaged


def test_corrupt_metrics_cells_are_skipped(tmp_path):
    path = write_run(tmp_path, "bad-cells", val_losses=(0.7, 0.6, 0.65))
    lines = (path / METRICS_FILE).read_bytes().decode().split("\r\n")
    cells = lines[2].split(",")
    cells[METRICS_COLUMNS.index("val_loss")] = "oops"
    lines[2] = ",".join(cells)
    (path / METRICS_FILE).write_bytes("\r\n".join(lines).encode())
    output = compare([path])
    assert output.warnings == [f"{path}: metrics.csv has 1 unreadable row (line 3); kept 2 readable evaluations"]


def test_unusable_metrics_skip_the_run(tmp_path):
    write_run(tmp_path, "good")
    garbage = write_run(tmp_path, "garbage")
    (garbage / METRICS_FILE).write_bytes(b"\x00\xff\xfe binary \x00")
    output = compare([tmp_path])
    assert output.warnings == [
        f"{garbage}: metrics.csv has no epoch and val_loss columns; no evaluations (status completed); skipped"
    ]
    assert "garbage" not in output.text


def test_run_that_failed_before_evaluating_is_skipped(tmp_path):
    write_run(tmp_path, "good")
    failed = write_run(tmp_path, "failed", with_metrics=False, status="failed", summary_fields={"error": "CUDA out of memory"})
    output = compare([tmp_path])
    assert output.warnings == [f"{failed}: no metrics.csv; no evaluations (status failed); skipped"]


def test_failed_run_with_evaluations_is_shown(tmp_path):
    path = write_run(tmp_path, "failed", val_losses=(0.8, 0.7), status="failed", summary_fields={"error": "CUDA out of memory\ntraceback"})
    output = compare([path])
    assert output.warnings == [
        f"{path}: failed at epoch 2 of 3 (CUDA out of memory); shown as incomplete, left out of seed statistics"
    ]


def test_missing_summary_gives_status_unknown(tmp_path):
    partial = write_run(tmp_path, "partial", val_losses=(0.8, 0.7), with_summary=False)
    full = write_run(tmp_path, "full", with_summary=False, seed=7)
    output = compare([tmp_path])
    assert output.warnings == [
        f"{full}: no summary.json; status unknown, but metrics.csv reaches the configured 3 epochs; counted as complete",
        f"{partial}: no summary.json; status unknown, at epoch 2 of 3; shown as incomplete, left out of seed statistics",
    ]
    statuses = {run.name: (run.status, run.complete) for run in report_of([tmp_path]).runs}
    assert statuses == {"full": ("unknown", True), "partial": ("unknown", False)}


def test_half_written_summary_is_reported(tmp_path):
    path = write_run(tmp_path, "half")
    (path / SUMMARY_FILE).write_text('{"status": "compl')
    output = compare([path])
    assert output.warnings == [
        f"{path}: summary.json is corrupt; status unknown, but metrics.csv reaches the configured 3 epochs; counted as complete"
    ]


def test_missing_config_groups_by_the_summary(tmp_path):
    path = write_run(tmp_path, "no-config", with_config=False)
    output = compare([path])
    assert output.warnings == [f"{path}: no config.yaml; grouped by the settings in summary.json"]
    assert report_of([path]).runs[0].mode == "baseline"


def test_runs_without_config_do_not_clutter_the_other_labels(tmp_path):
    write_run(tmp_path, "full", seed=1)
    write_run(tmp_path, "no-config", seed=2, with_config=False)
    write_run(tmp_path, "bare", seed=3, with_config=False, with_summary=False)
    labels = sorted(group.label for group in report_of([tmp_path]).groups)
    assert labels == ["? (bare)", "baseline lr=2e-05", "baseline lr=2e-05 [no config.yaml]"]


def test_metrics_alone_are_still_compared(tmp_path):
    path = write_run(tmp_path, "bare", with_config=False, with_summary=False)
    output = compare([path])
    assert output.warnings == [
        f"{path}: no config.yaml; no summary.json; grouped on its own; status unknown, at epoch 3; "
        "shown as incomplete, left out of seed statistics"
    ]


HINT = "; pass run folders or folders that hold them (each has metrics.csv)"


@pytest.mark.parametrize(
    ("make", "argument", "reason"),
    [
        (lambda root: None, "runs", "no such folder"),
        (lambda root: (root / "runs").mkdir(), "runs", "an empty folder"),
        (lambda root: (root / "runs" / "logs").mkdir(parents=True), "runs",
         "no config.yaml, metrics.csv or summary.json in it or its subfolders"),
        (lambda root: (root / "notes.txt").write_text("x"), "notes.txt", "a file, not a run folder"),
        (lambda root: None, "run-*", "no file or folder matches"),
    ],
)
def test_no_runs_is_an_error_that_says_why(tmp_path, make, argument, reason):
    make(tmp_path)
    with pytest.raises(FloodError) as error:
        compare([tmp_path / argument])
    assert str(error.value) == f"no runs found in {tmp_path / argument} ({reason}){HINT}"


def test_no_runs_in_several_arguments_names_each_reason_up_to_three(tmp_path):
    (tmp_path / "empty").mkdir()
    arguments = [tmp_path / "gone", tmp_path / "empty", tmp_path / "gone-2", tmp_path / "gone-3", tmp_path / "gone-4"]
    with pytest.raises(FloodError) as error:
        compare(arguments)
    assert str(error.value) == (
        f"no runs found in {tmp_path / 'gone'} (no such folder), {tmp_path / 'empty'} (an empty folder), "
        f"{tmp_path / 'gone-2'} (no such folder) and 2 more{HINT}"
    )


def test_no_usable_run_is_an_error_that_names_the_reason(tmp_path):
    write_run(tmp_path, "failed", with_metrics=False, status="failed")
    with pytest.raises(FloodError, match=r"^no usable runs in .*: .*failed: no metrics.csv; no evaluations \(status failed\); skipped$"):
        compare([tmp_path])


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


# ---------------------------------------------------------------------------
# Validation loss up, accuracy up


@pytest.mark.parametrize(
    ("val_losses", "val_accuracies", "up_epochs", "best_loss_epoch", "best_accuracy_epoch"),
    [
        ((0.6, 0.5, 0.55, 0.62), (0.80, 0.84, 0.86, 0.87), [3, 4], 2, 4),
        ((0.6, 0.5, 0.45), (0.80, 0.84, 0.86), [], 3, 3),
        ((0.6, 0.7, 0.65), (0.80, 0.79, 0.81), [], 1, 3),  # loss up with accuracy down is plain overfitting
        ((0.6, 0.7, float("nan"), 0.8), (0.8, 0.9, 0.95, 0.96), [2], 1, 4),
    ],
)
def test_loss_up_accuracy_up(tmp_path, val_losses, val_accuracies, up_epochs, best_loss_epoch, best_accuracy_epoch):
    write_run(tmp_path, "run", val_losses=val_losses, val_accuracies=val_accuracies, epochs=len(val_losses))
    run = report_of([tmp_path]).runs[0]
    assert [row["epoch"] for row in run.loss_up_accuracy_up] == up_epochs
    assert run.best_row["epoch"] == best_loss_epoch
    assert run.best_accuracy_row["epoch"] == best_accuracy_epoch


def test_best_loss_and_best_accuracy_apart_are_flagged(tmp_path):
    write_run(tmp_path, "run", val_losses=(0.6, 0.5, 0.55), val_accuracies=(0.8, 0.84, 0.86))
    text = compare([tmp_path]).text
    assert "2 (200): 0.5000" in text and "3 (300): 0.8600 *" in text
    assert "* best loss and best accuracy at different evaluations" in text


# ---------------------------------------------------------------------------
# Output formats


def test_json_has_stable_keys(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.81, 0.82])
    write_seed_group(tmp_path, "flood", [0.79, 0.80], mode="flooding", b=0.5)
    document = json.loads(compare([tmp_path], as_json=True).text)
    assert list(document) == ["version", "runs", "groups", "comparisons", "warnings"]
    assert list(document["runs"][0]) == [
        "name", "path", "group", "status", "complete", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "model",
        "data", "evaluations", "last_epoch", "best_val_loss", "best_epoch", "best_step", "val_accuracy_at_best",
        "best_val_accuracy", "best_val_accuracy_epoch", "best_val_accuracy_step", "final_val_loss",
        "final_val_accuracy", "diff_to_baseline", "diff_to_baseline_pct", "loss_up_accuracy_up",
        "best_val_ece", "best_val_confidence", "best_val_confident_wrong",
        "paired_diff_to_baseline", "paired_diff_to_baseline_pct", "still_improving",
    ]
    assert list(document["groups"][0]) == [
        "id", "label", "mode", "baseline", "runs", "n", "n_runs", "n_left_out", "best_val_loss_mean", "best_val_loss_sd",
        "best_val_loss_min", "best_val_loss_max", "settings",
    ]
    assert list(document["comparisons"][0]) == [
        "group", "baseline", "n", "n_baseline", "mean", "baseline_mean", "difference", "difference_pct",
        "ci_level", "ci_low", "ci_high", "method", "df", "verdict", "note",
        "verdict_method", "unpaired_verdict", "paired_seeds", "n_paired", "paired_differences", "paired_difference",
        "paired_difference_pct", "paired_ci_low", "paired_ci_high", "paired_df", "still_improving",
        "ci_p_value", "paired_p_value", "p_value", "p_value_holm", "verdict_rule", "holm_family",
    ]
    assert document["runs"][0]["loss_up_accuracy_up"][0].keys() == {
        "epoch", "step", "val_loss", "val_accuracy", "val_loss_top10_share", "val_ece", "val_confident_wrong"
    }
    assert document["comparisons"][0]["verdict"] in ("lower (better)", "within seed noise")


def test_json_is_strict_even_for_diverged_runs(tmp_path):
    write_run(tmp_path, "diverged", val_losses=(float("nan"),))
    text = compare([tmp_path], as_json=True).text
    assert "NaN" not in text
    assert json.loads(text)["runs"][0]["best_val_loss"] is None


def test_csv_has_one_row_per_run(tmp_path):
    write_seed_group(tmp_path / "runs", "baseline", [0.81, 0.80])
    output = compare([tmp_path / "runs"], csv_path=tmp_path / "table.csv")
    with open(tmp_path / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(row["name"], float(row["best_val_loss"])) for row in rows] == [("baseline-s2", 0.80), ("baseline-s1", 0.81)]
    assert output.text.endswith(f"wrote {tmp_path / 'table.csv'}")


def test_csv_to_an_unwritable_place_is_an_error(tmp_path):
    write_run(tmp_path, "run")
    with pytest.raises(FloodError, match="^cannot write CSV"):
        compare([tmp_path / "run"], csv_path=tmp_path / "missing" / "table.csv")


def test_markdown_tables(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.81, 0.80])
    write_seed_group(tmp_path, "flood", [0.79], mode="flooding", b=0.5)
    text = compare([tmp_path], markdown=True).text
    assert text.startswith("**Runs, sorted by best validation loss**\n\n| run | group | mode |")
    assert "| flood-s1 | g1 | flooding | 0.5 | 2e-05 |  | 1 | 3 | 0.7900 |" in text
    assert "**Against the baseline" in text
    # A footnote starting with "*" would become a bullet point and lose its marker.
    assert "\n\\* best loss and best accuracy at different evaluations" in text


def test_terminal_table_lines_up(tmp_path):
    write_seed_group(tmp_path, "baseline", [0.81, 0.80])
    lines = compare([tmp_path]).text.splitlines()
    assert lines[0] == "Runs, sorted by best validation loss"
    header, rule, first = lines[2], lines[3], lines[4]
    assert set(rule.strip()) == {"─"}
    assert first.index("0.8000") == header.index("best val_loss") + len("best val_loss") - len("0.8000")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"markdown": True, "as_json": True}, "--markdown and --json print different formats; pick one"),
        ({"x_axis": "time"}, "--x 'time' is not an axis; use epoch or step"),
    ],
)
def test_option_errors(tmp_path, options, message):
    write_run(tmp_path, "run")
    with pytest.raises(FloodError) as error:
        compare([tmp_path], **options)
    assert str(error.value) == message


# ---------------------------------------------------------------------------
# The command line


runner = CliRunner()


def test_cli_no_runs_exits_with_an_error(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == f"error: no runs found in {tmp_path} (an empty folder){HINT}\n"
    assert result.stdout == ""


def test_cli_prints_warnings_on_stderr_and_the_table_on_stdout(tmp_path):
    write_run(tmp_path, "good")
    (tmp_path / "junk").mkdir()
    result = runner.invoke(app, ["compare", str(tmp_path / "good"), str(tmp_path / "junk")])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: {tmp_path / 'junk'}: an empty folder; skipped"
    ]
    assert result.stdout.startswith("Runs, sorted by best validation loss")


def test_cli_missing_folder_says_so(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path / "runs")])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: no runs found in {tmp_path / 'runs'} (no such folder){HINT}\n"


def test_cli_json_is_pure_json_on_stdout(tmp_path):
    write_run(tmp_path, "good", with_summary=False)
    result = runner.invoke(app, ["compare", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["warnings"] == [line.removeprefix("warning: ") for line in result.stderr.splitlines()]


def test_cli_option_conflict(tmp_path):
    write_run(tmp_path, "good")
    result = runner.invoke(app, ["compare", str(tmp_path), "--json", "--markdown"])
    assert (result.exit_code, result.stderr) == (1, "error: --markdown and --json print different formats; pick one\n")


def test_compare_imports_no_heavy_library():
    code = (
        "import sys, flood_cli.compare.command, flood_cli.cli.main\n"
        "heavy = {'torch', 'transformers', 'datasets', 'accelerate', 'numpy', 'pandas', 'scipy', 'matplotlib'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_metrics_writer_format_round_trips():
    rows = make_rows((0.5, 0.4))
    parsed, problems = parse_metrics(metrics_csv(rows))
    assert problems == [] and [row["val_loss"] for row in parsed] == [0.5, 0.4]


def test_a_key_that_older_runs_lack_still_tells_groups_apart(tmp_path):
    """A config written before a key existed (here train.ascent_optimizer) differs from
    one that has it: the labels say so instead of numbering look-alike groups."""
    write_run(tmp_path, "old", mode="alternate", lr=1e-3, ascent_lr=1e-4)
    write_run(tmp_path, "new", mode="alternate", lr=1e-3, ascent_lr=1e-4, train={"ascent_optimizer": "separate"})
    labels = sorted(group.label for group in build_report([tmp_path]).groups)
    assert labels == ["alternate lr=0.001 alr=0.0001", "alternate lr=0.001 alr=0.0001 ascent_optimizer=separate"]


# ---------------------------------------------------------------------------
# Run folders from others: YAML that expands, repeats keys or holds itself; numbers
# beyond a float; names with line breaks


def _alias_bomb(levels: int = 8) -> str:
    """Ten aliases to the anchor before, ``levels`` times: 10**levels values (a billion laughs)."""
    return "bomb:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, levels + 1)
    )


def _spoil_config(path, edit) -> None:
    config = path / "config.yaml"
    config.write_text(edit(config.read_text()))


LR_LINE = "  lr: 2.0e-05\n"
REFUSED_CONFIGS = [
    # (case, edit of config.yaml's text, expected warning after "<run>: config.yaml: ")
    (
        "alias bomb (99 s, then MemoryError)",
        lambda text: _alias_bomb() + text.replace(LR_LINE, "  lr: *a8\n"),
        "YAML aliases repeat more than 10000 values (seen at line 5, column 7); skipped",
    ),
    (
        "recursive alias (ValueError: Circular reference detected)",
        lambda text: text.replace(LR_LINE, "  lr: &a [*a]\n"),
        "recursive YAML alias at line 30, column 7 (a value that contains itself); skipped",
    ),
    (
        "key twice",
        lambda text: text.replace(LR_LINE, LR_LINE + "  lr: 1.0e-05\n"),
        "key 'train.lr' appears twice (lines 30 and 31); skipped",
    ),
    (
        "section twice",
        lambda text: text + "train:\n  lr: 1.0e-05\n",
        "key 'train' appears twice (lines 27 and 54); skipped",
    ),
]


@pytest.mark.timeout(30)  # the alias bomb ran for 99 s
@pytest.mark.parametrize(("case", "edit", "expected"), REFUSED_CONFIGS, ids=[c[0] for c in REFUSED_CONFIGS])
def test_a_run_whose_config_yaml_is_refused_is_skipped(tmp_path, case, edit, expected):
    write_seed_group(tmp_path, "good", [0.81, 0.80])
    bad = write_run(tmp_path, "bad", seed=3, val_losses=(0.5, 0.4))
    _spoil_config(bad, edit)
    started = time.perf_counter()
    output = compare([tmp_path])
    assert time.perf_counter() - started < 1.0
    assert output.warnings == [f"{bad}: config.yaml: {expected}"]
    assert [run.name for run in report_of([tmp_path]).runs] == ["good-s2", "good-s1"]
    assert "bad" not in output.text
    document = json.loads(compare([tmp_path], as_json=True).text)
    assert document["warnings"] == output.warnings and len(document["runs"]) == 2


def test_aliases_within_the_limit_are_read(tmp_path):
    """flood writes no anchors, but a config.yaml edited by hand may use a few."""
    path = write_run(tmp_path, "anchored", lr=1e-5)
    _spoil_config(path, lambda text: "shared: &lr 3.0e-05\n" + text.replace("  lr: 1.0e-05\n", "  lr: *lr\n"))
    output = compare([path])
    assert output.warnings == []
    assert report_of([path]).runs[0].lr == 3e-5


def test_losses_near_the_float_limit_are_compared_not_a_crash(tmp_path):
    """1e308 in metrics.csv: the seed statistics overflowed (OverflowError from sd ** 2)."""
    write_seed_group(tmp_path, "base", [0.81, 0.80])
    write_run(tmp_path, "huge-s1", val_losses=(1e308, 1e308), seed=1, mode="flooding", b=0.5)
    write_run(tmp_path, "huge-s2", val_losses=(1.7e308, 1.7e308), seed=2, mode="flooding", b=0.5)
    write_run(tmp_path, "apart-s1", val_losses=(1.7e308,), seed=1, mode="flooding", b=0.7)
    write_run(tmp_path, "apart-s2", val_losses=(-1.7e308,), seed=2, mode="flooding", b=0.7)  # sd beyond a float
    report = report_of([tmp_path])
    assert {c.group.label: c.verdict for c in report.comparisons} == {
        "flooding b=0.5 lr=2e-05": OUT_OF_RANGE,
        "flooding b=0.7 lr=2e-05": OUT_OF_RANGE,
    }
    assert all(c.interval is None for c in report.comparisons)
    huge = next(group for group in report.groups if group.label.startswith("flooding b=0.5"))
    assert huge.sample.mean == 1.35e308
    text = compare([tmp_path]).text
    assert (" huge-s2   g3     flooding  0.5  2e-05                2       3    1.7000e+308  +1.7000e+308 (+inf%)"
            "     +1.7000e+308 (+inf%)     1.7000e+308  completed") in text
    assert " g1     flooding b=0.7 lr=2e-05     2      2               0.0000 ± inf  -1.7000e+308  1.7000e+308" in text
    assert " g3     flooding b=0.5 lr=2e-05     2      2  1.3500e+308 ± 4.9497e+307   1.0000e+308  1.7000e+308" in text
    assert (" g3     g2 (2 seeds)      2  +1.3500e+308 (+inf%)  +1.3500e+308 (+inf%)             2  "
            "losses beyond float range: no interval") in text
    assert max(len(line) for line in text.splitlines()) < 200  # no 309-digit figures
    document = json.loads(compare([tmp_path], as_json=True).text)  # strict JSON: no inf
    assert {c["verdict"] for c in document["comparisons"]} == {OUT_OF_RANGE}
    assert compare([tmp_path], markdown=True).text.count("| huge-s") == 4  # two tables
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert (result.exit_code, result.stderr) == (0, "")


def test_names_with_line_breaks_and_control_characters_stay_on_their_row(tmp_path):
    write_run(tmp_path, "plain", seed=1)
    write_run(tmp_path, "two\nlines", seed=2, val_losses=(0.5, 0.4))
    write_run(tmp_path, "red\x1b[31mtext\u2028end", seed=3, val_losses=(0.45, 0.42))
    text = compare([tmp_path]).text
    lines = text.splitlines()
    assert lines[4].split()[0] == "two\\nlines" and lines[5].split()[0] == "red\\x1b[31mtext\\u2028end"
    assert lines[6].split()[0] == "plain" and lines[7] == ""
    assert "\x1b" not in text and "\u2028" not in text and "two\nlines" not in text
    markdown = compare([tmp_path], markdown=True).text
    assert "| two\\nlines | g1 | baseline |" in markdown and "| red\\x1b[31mtext\\u2028end | g1 |" in markdown
    assert "\x1b" not in markdown
    # JSON and CSV keep the name as it is (both quote it)
    assert [run["name"] for run in json.loads(compare([tmp_path], as_json=True).text)["runs"]] == [
        "two\nlines", "red\x1b[31mtext\u2028end", "plain",
    ]


def test_cli_warnings_about_odd_paths_are_one_line_each(tmp_path):
    write_run(tmp_path, "good")
    odd = write_run(tmp_path, "odd\nname", with_summary=False)
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: {tmp_path}/odd\\nname: no summary.json; status unknown, but metrics.csv reaches the configured 3 "
        "epochs; counted as complete"
    ]
    assert odd.exists()


def test_calibration_at_the_best_evaluation_is_shown_when_runs_log_it(tmp_path):
    """Newer runs log val_ece and val_confident_wrong: the 'where best' table shows them
    at the best-loss evaluation, and the JSON carries them; runs without them show blanks."""
    from flood_cli.compare.command import compare_command
    from flood_cli.runs.folder import METRICS_FILE

    calibrated = write_run(tmp_path / "runs", "calibrated", val_losses=(0.6, 0.5, 0.55))
    rows = make_rows((0.6, 0.5, 0.55))
    for row, ece, wrong in zip(rows, (0.08, 0.031, 0.2), (1, 2, 7)):
        row.update(val_ece=ece, val_confidence=0.9, val_confident_wrong=wrong)
    (calibrated / METRICS_FILE).write_text(metrics_csv(rows), encoding="utf-8", newline="")
    write_run(tmp_path / "runs", "older", val_losses=(0.7, 0.65, 0.6), seed=7)

    text = compare_command([tmp_path / "runs"]).text
    table = text[text.index("Where each run was best"):]
    header = next(line for line in table.splitlines() if "ECE there" in line)
    assert "conf. wrong there" in header
    calibrated_line = next(line for line in table.splitlines() if line.strip().startswith("calibrated"))
    assert calibrated_line.rstrip().endswith("0.0310                  2")
    assert "ECE: expected calibration error (15 bins); conf. wrong: validation examples wrong with p > 0.9." in table
    document = json.loads(compare_command([tmp_path / "runs"], as_json=True).text)
    by_name = {run["name"]: run for run in document["runs"]}
    assert (by_name["calibrated"]["best_val_ece"], by_name["calibrated"]["best_val_confident_wrong"]) == (0.031, 2)
    assert by_name["older"]["best_val_ece"] is None


# ---------------------------------------------------------------------------
# Paired differences: same seed, same data order and initialisation


# The README's seed example (embedded default, --seed 1/2/3, with and without --b 0.1).
README_BASELINE = {1: 0.1665, 2: 0.1268, 3: 0.2261}
README_FLOODING = {1: 0.1970, 2: 0.1632, 3: 0.2021}


def write_readme_seeds(root, baseline=README_BASELINE, flooding=README_FLOODING):
    for seed, best in baseline.items():
        write_run(root, f"base-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed)
    for seed, best in flooding.items():
        write_run(root, f"flood-s{seed}", val_losses=(best + 0.05, best, best + 0.02), seed=seed, mode="flooding", b=0.1)


@pytest.fixture(autouse=True)
def no_terminal_width(monkeypatch):
    """Tables are fitted to COLUMNS when it is set: the tests choose it themselves."""
    monkeypatch.delenv("COLUMNS", raising=False)


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
# Tables that fit the terminal


def write_wide_runs(root):
    """Runs named as flood train names them, with every column filled."""
    for seed, best in ((1, 0.1665), (2, 0.1268), (3, 0.2261)):
        write_run(root, f"baseline-lr0.001-s{seed}-20261126-13123{seed}", val_losses=(best + 0.05, best, best + 0.02),
                  seed=seed, lr=1e-3)
        write_run(root, f"alternate-lr0.001-alr0.0001-s{seed}-20261126-14000{seed}",
                  val_losses=(best + 0.06, best + 0.01 * seed, best + 0.03), seed=seed, lr=1e-3, mode="alternate",
                  ascent_lr=1e-4, train={"ascent_optimizer": "separate", "warmup_schedule": "a-long-setting-value"})
        write_run(root, f"flooding-b0.05-lr0.001-s{seed}-20261126-15000{seed}",  # still improving at epoch 3
                  val_losses=(best + 0.05, best, best - 0.004 * seed), seed=seed, lr=1e-3, mode="flooding", b=0.05)


@pytest.mark.parametrize("columns", [100, 80])
def test_tables_fit_the_terminal(tmp_path, columns):
    write_wide_runs(tmp_path / "runs")
    wide = runner.invoke(app, ["compare", str(tmp_path / "runs"), "--wide"], env={"COLUMNS": str(columns)})
    assert max(len(line) for line in wide.stdout.splitlines()) > 140  # what wrapped in a 100-column terminal
    result = runner.invoke(app, ["compare", str(tmp_path / "runs")], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert sum(line.startswith("Left out to fit") for line in lines) >= 2
    # The figures the verdicts rest on are all still there.
    for text in ("0.1268", "within seed noise (paired)", "completed †", "g3"):
        assert text in result.stdout
    # Markdown, CSV and JSON stay complete however narrow the terminal.
    markdown = runner.invoke(app, ["compare", str(tmp_path / "runs"), "--markdown"], env={"COLUMNS": str(columns)})
    assert "| final val_loss |" in markdown.stdout and "Left out" not in markdown.stdout
    assert markdown.stdout.count("95% interval") >= 1


def test_the_left_out_columns_are_named(tmp_path):
    write_readme_seeds(tmp_path)
    lines = compare([tmp_path], width=80).text.splitlines()
    assert lines[2:6] == [
        " run       group  seed    best             Δ mean        Δ same seed  status",
        " " + "─" * 78,
        " base-s2   g1        2  0.1268                                        completed",
        " flood-s2  g2        2  0.1632   -0.0099 (-5.74%)  +0.0364 (+28.71%)  completed",
    ]
    assert ("Left out to fit 80 columns: ascent_lr, epochs, final val_loss, lr, b, mode; --wide shows every column.")\
        in " ".join(" ".join(lines).split())
    comparison = lines[lines.index("Against the baseline: best validation loss, group − baseline (95% intervals)") + 2:][:3]
    assert comparison == [
        " group          paired Δ  paired 95% CI           p  verdict",
        " " + "─" * 78,
        " g2     +0.0143 (+8.26%)  [-0.0684, +0.0970]  0.535  within seed noise (paired)",
    ]
    assert compare([tmp_path], width=80, wide=True).text == compare([tmp_path]).text  # --wide: everything


def test_long_names_are_cut_in_the_middle(tmp_path):
    name = "flooding-b0.05-lr0.001-warmup0.1-batch32-s42-20261126-131239"
    write_run(tmp_path, name, seed=42, mode="flooding", b=0.05)
    text = compare([tmp_path], width=60).text
    assert name not in text
    cut = next(line.split()[0] for line in text.splitlines() if line.startswith(" flooding-"))
    assert "…" in cut and name.startswith(cut.split("…")[0]) and name.endswith(cut.split("…")[1])


def test_terminal_width_comes_from_columns_or_the_terminal(monkeypatch):
    from flood_cli.compare.tables import terminal_width

    monkeypatch.setenv("COLUMNS", "93")
    assert terminal_width() == 93
    monkeypatch.setenv("COLUMNS", "wide")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert terminal_width() is None  # not a number, and stdout is no terminal: no limit, as in a pipe


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
        for (seed, best), d in zip(baseline.items(), diffs):
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
    for seed, best in zip((11, 12, 13), (0.74, 0.77, 0.80)):  # −0.06 below the baseline's mean; −0.08 below
        write_run(tmp_path, f"a-s{seed}", val_losses=(best + 0.02, best, best + 0.01), seed=seed, mode="flooding", b=0.1)
    for seed, best in zip((11, 12, 13), (0.72, 0.75, 0.78)):
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
    from flood_cli.sweep import driver as sweep

    folder = tmp_path / "sweep"
    write_holm_settings(folder / "runs")
    spec = sweep.SweepSpec(name="holm", folder=str(folder), base={}, mode="flooding",
                           settings=[{"train.mode": "baseline"}, *({"train.mode": "flooding", "train.b": b} for b in (0.1, 0.2, 0.3))],
                           seeds=[1, 2, 3])
    sweep.write_results(spec)
    results = " ".join((folder / "results.md").read_text().split())
    assert "Verdicts: lower or higher when the Holm-adjusted p (Holm p) over the 3 comparisons in this table" in results
    assert "| within seed noise (paired) | [1] |" in results  # b = 0.2: better alone, not after Holm
    assert results.count("| lower (better) (paired) |") == 1


# ---------------------------------------------------------------------------
# Run files that never end or never open: named pipes, links to devices, files over
# their cap. Each is skipped with one warning line, never read, and the good run beside
# it is compared. Run through the real CLI in a child process: a hang fails the test at
# its timeout (it once blocked forever), and a read without bound meets a 2 GiB cap on
# the child's memory (it once grew until the OOM killer) instead of the machine's.


def _flood_compare(*paths: Path) -> subprocess.CompletedProcess:
    import os
    import resource

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flood_cli", "compare", *map(str, paths)],
        capture_output=True, text=True, env=env, timeout=20, preexec_fn=cap_memory,
    )


def _named_pipe(path: Path) -> None:
    import os

    os.mkfifo(path)


def _link_to(target: str):
    return lambda path: path.symlink_to(target)


def _sparse(size: int):
    def write(path: Path) -> None:
        with open(path, "wb") as handle:  # holes: no disk used, nothing written
            handle.truncate(size)

    return write


DEVICE_OR_PIPE_FILES = [
    # (case, the run file replaced, how, the warning after "<run>: ")
    ("metrics.csv a named pipe (blocked forever)", METRICS_FILE, _named_pipe,
     "metrics.csv is not a regular file (a named pipe); skipped"),
    ("metrics.csv a link to /dev/zero (read without bound)", METRICS_FILE, _link_to("/dev/zero"),
     "metrics.csv is not a regular file (a link to /dev/zero, a device); skipped"),
    ("config.yaml a link to /dev/urandom (read without bound)", CONFIG_FILE, _link_to("/dev/urandom"),
     "config.yaml is not a regular file (a link to /dev/urandom, a device); skipped"),
    ("summary.json a link to /dev/zero (read without bound)", SUMMARY_FILE, _link_to("/dev/zero"),
     "summary.json is not a regular file (a link to /dev/zero, a device); skipped"),
    ("summary.json a named pipe (blocked forever)", SUMMARY_FILE, _named_pipe,
     "summary.json is not a regular file (a named pipe); skipped"),
    ("metrics.csv one byte over its cap (read whole)", METRICS_FILE, _sparse(MAX_METRICS_BYTES + 1),
     f"metrics.csv is too large to read ({MAX_METRICS_BYTES + 1:,} bytes; flood reads at most 64 MiB); skipped"),
    ("config.yaml one byte over its cap", CONFIG_FILE, _sparse(MAX_CONFIG_BYTES + 1),
     f"config.yaml is too large to read ({MAX_CONFIG_BYTES + 1:,} bytes; flood reads at most 1 MiB); skipped"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("case", "name", "replace", "expected"), DEVICE_OR_PIPE_FILES, ids=[c[0] for c in DEVICE_OR_PIPE_FILES])
def test_a_run_file_that_is_not_a_regular_file_or_too_large_skips_its_run(tmp_path, case, name, replace, expected):
    runs = tmp_path / "runs"
    write_run(runs, "good", seed=1)
    bad = write_run(runs, "bad", seed=2, val_losses=(0.5, 0.4))
    (bad / name).unlink()
    replace(bad / name)
    started = time.perf_counter()
    result = _flood_compare(runs)
    assert (result.returncode, result.stderr.splitlines()) == (0, [f"warning: {bad}: {expected}"]), result.stderr
    assert time.perf_counter() - started < 10
    table = result.stdout.splitlines()
    assert table[0] == "Runs, sorted by best validation loss"
    assert table[4].split()[:2] == ["good", "g1"] and table[5] == ""  # the good run, alone
    assert "bad" not in result.stdout


def test_run_files_at_their_cap_are_read_and_one_byte_more_is_refused(tmp_path, monkeypatch):
    """The caps are exact: a file of the cap's size is read, one byte more is not. The
    caps are looked up when a file is read (set small here, rather than writing 64 MiB)."""
    import flood_cli.runs.folder as runs_module

    run = write_run(tmp_path, "run")
    sizes = {name: (run / name).stat().st_size for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)}
    caps = {CONFIG_FILE: "MAX_CONFIG_BYTES", METRICS_FILE: "MAX_METRICS_BYTES", SUMMARY_FILE: "MAX_SUMMARY_BYTES"}
    for name, size in sizes.items():
        monkeypatch.setattr(runs_module, caps[name], size)
        assert compare([run]).warnings == [], name
        monkeypatch.setattr(runs_module, caps[name], size - 1)
        with pytest.raises(FloodError) as refused:
            compare([run])
        assert str(refused.value) == (
            f"no usable runs in {run}: {run}: {name} is too large to read ({size:,} bytes; "
            f"flood reads at most {size - 1:,} bytes); skipped"
        )
        monkeypatch.setattr(runs_module, caps[name], size)


def test_a_file_that_says_size_0_is_still_read_no_further_than_its_cap(tmp_path):
    """/proc files report size 0 and hold more: the read itself stops one byte past the cap."""
    from flood_cli.runs.folder import RunFileRefused, read_run_file

    link = tmp_path / SUMMARY_FILE
    link.symlink_to("/proc/self/status")
    assert Path("/proc/self/status").stat().st_size == 0
    with pytest.raises(RunFileRefused) as refused:
        read_run_file(link, limit=10)
    assert refused.value.problem == "summary.json is too large to read (more than 10 bytes; flood reads at most 10 bytes)"
    assert read_run_file(link, limit=100_000).startswith(b"Name:")


def test_a_folder_whose_only_run_file_is_a_named_pipe_is_found_and_skipped(tmp_path):
    """Discovery looks at names only (it found no run here: is_file() is false for a pipe)."""
    import os

    write_run(tmp_path, "good")
    (tmp_path / "pipe-only").mkdir()
    os.mkfifo(tmp_path / "pipe-only" / METRICS_FILE)
    output = compare([tmp_path])
    assert output.warnings == [f"{tmp_path / 'pipe-only'}: metrics.csv is not a regular file (a named pipe); skipped"]
    assert [run.name for run in report_of([tmp_path]).runs] == ["good"]
