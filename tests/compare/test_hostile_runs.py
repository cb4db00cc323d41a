"""flood compare on run folders from others: YAML that expands, repeats keys or holds
itself; numbers beyond a float; names with line breaks; run files that never end or never
open (named pipes, links to devices, files over their cap).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flood_cli.cli.main import app
from flood_cli.compare.stats import OUT_OF_RANGE
from flood_cli.config.basics import MAX_CONFIG_BYTES
from flood_cli.core.errors import FloodError
from flood_cli.runs.folder import (
    CONFIG_FILE,
    MAX_METRICS_BYTES,
    METRICS_FILE,
    SUMMARY_FILE,
)
from tests.compare.helpers import compare, report_of, runner, write_seed_group
from tests.conftest import ROOT
from tests.run_factory import write_run

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
