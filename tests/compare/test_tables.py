"""flood compare's output: JSON, CSV, Markdown and text tables, fitted to the terminal."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from flood_cli.cli.main import app
from flood_cli.compare.command import compare_command
from flood_cli.compare.records import CSV_COLUMNS
from flood_cli.core.errors import FloodError
from flood_cli.runs.folder import (
    METRICS_FILE,
)
from tests.compare.helpers import compare, runner, write_readme_seeds, write_seed_group
from tests.run_factory import make_rows, metrics_csv, write_run

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
        "paired_diff_to_baseline", "paired_diff_to_baseline_pct", "still_improving", "stopped_early", "stopped_at_step",
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


def test_calibration_at_the_best_evaluation_is_shown_when_runs_log_it(tmp_path):
    """Newer runs log val_ece and val_confident_wrong: the 'where best' table shows them
    at the best-loss evaluation, and the JSON carries them; runs without them show blanks."""

    calibrated = write_run(tmp_path / "runs", "calibrated", val_losses=(0.6, 0.5, 0.55))
    rows = make_rows((0.6, 0.5, 0.55))
    for row, ece, wrong in zip(rows, (0.08, 0.031, 0.2), (1, 2, 7), strict=True):
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
    from flood_cli.compare.render import terminal_width

    monkeypatch.setenv("COLUMNS", "93")
    assert terminal_width() == 93
    monkeypatch.setenv("COLUMNS", "wide")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert terminal_width() is None  # not a number, and stdout is no terminal: no limit, as in a pipe
