"""flood compare's arguments -> run folders: parents, sweeps, globs, duplicates."""

from __future__ import annotations

from flood_cli.runs.folder import (
    SUMMARY_FILE,
)
from tests.compare.helpers import compare, report_of, write_seed_group
from tests.run_factory import write_run

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
