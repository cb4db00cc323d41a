"""flood compare reading run folders: metrics.csv parsing, runs in progress, damaged or
missing files (one warning line each), no usable runs, the loss-up-accuracy-up rows.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flood_cli.compare.command import compare_command
from flood_cli.compare.reader import parse_metrics
from flood_cli.core.errors import FloodError
from flood_cli.runs.columns import METRICS_COLUMNS
from flood_cli.runs.folder import (
    METRICS_FILE,
    SUMMARY_FILE,
)
from tests.compare.helpers import HINT, NOW, compare, report_of, write_seed_group
from tests.run_factory import make_rows, metrics_csv, write_run

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


def test_metrics_writer_format_round_trips():
    rows = make_rows((0.5, 0.4))
    parsed, problems = parse_metrics(metrics_csv(rows))
    assert problems == [] and [row["val_loss"] for row in parsed] == [0.5, 0.4]
