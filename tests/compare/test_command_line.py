"""`flood compare` on the command line: exit codes, stdout and stderr, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

from flood_cli.cli.main import app
from tests.compare.helpers import HINT, runner
from tests.run_factory import write_run

# ---------------------------------------------------------------------------
# The command line


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


def test_cli_quiet_hides_the_warnings_but_not_the_table_or_errors(tmp_path):
    write_run(tmp_path, "good")
    (tmp_path / "junk").mkdir()
    loud = runner.invoke(app, ["compare", str(tmp_path / "good"), str(tmp_path / "junk")])
    for flag in ("-q", "--quiet"):
        result = runner.invoke(app, ["compare", flag, str(tmp_path / "good"), str(tmp_path / "junk")])
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        assert result.stdout == loud.stdout
    result = runner.invoke(app, ["compare", "-q", str(tmp_path / "good"), str(tmp_path / "junk"), "--json"])
    assert result.stderr == ""
    assert json.loads(result.stdout)["warnings"] == [f"{tmp_path / 'junk'}: an empty folder; skipped"]
    result = runner.invoke(app, ["compare", "-q", str(tmp_path / "junk")])
    assert result.exit_code == 1
    assert result.stderr == f"error: no runs found in {tmp_path / 'junk'} (an empty folder){HINT}\n"


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
