"""Weights & Biases gets every evaluation row, the config and the summary, read back from
the offline run files W&B writes in the run folder (its transaction log, ``run-<id>.wandb``:
LevelDB-log records of W&B's protobuf ``Record``, parsed here as W&B's sync does)."""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from flood_cli.config.load import load_config
from flood_cli.core.errors import FloodError
from flood_cli.runs.columns import SCALARS
from flood_cli.train.entry import resume_training, run_training
from tests.runs.test_tracking import config, crashed_run, no_loading, run_files

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path, monkeypatch):
    """Offline and silent; W&B's own folders (settings, caches) in a folder of the test
    that must stay empty: a run writes only inside its run folder."""
    elsewhere = tmp_path / "elsewhere"
    for name in list(os.environ):
        if name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(elsewhere / variable.lower()))
    monkeypatch.delenv("FLOOD_SWEEP", raising=False)
    yield
    # W&B's service keeps its own debug logs in its cache folder (wandb/logs/), whatever the run's folder.
    written = [path for path in elsewhere.rglob("*") if path.is_file() and path.parent.name != "logs"] if elsewhere.exists() else []
    assert not written, f"W&B wrote outside the run folder: {written}"


# ---------------------------------------------------------------------------
# W&B's transaction log: a 7-byte header (":W&B", 0xBEE1, version 0), then blocks of
# 32 KiB holding chunks (crc32 of type + data, length, type: full, first, middle, last).

_BLOCK = 32 * 1024


def wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pending, position = [], b"", 7
    while position + 7 <= len(data):
        if _BLOCK - position % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += _BLOCK - position % _BLOCK
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if (checksum, length, kind) == (0, 0, 0):
            break
        chunk = data[position + 7 : position + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) == checksum, f"damaged record at byte {position} of {path}"
        position += 7 + length
        pending += chunk
        if kind in (1, 4):  # full, or the last chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


class OfflineRun:
    """What one offline W&B run file holds."""

    def __init__(self, path: Path):
        self.path = path
        self.records = wandb_records(path)
        [run] = [record.run for record in self.records if record.WhichOneof("record_type") == "run"]
        self.run_id, self.project, self.group, self.name = run.run_id, run.project, run.run_group, run.display_name
        self.config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None
        for record in self.records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
                self.history.append(row)
            elif kind == "summary":
                for item in record.summary.update:
                    self.summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "exit":
                self.exit_code = record.exit.exit_code


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The run's offline W&B runs, oldest first."""
    return [OfflineRun(path) for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))]


def assert_rows_match_csv(history: list[dict[str, Any]], run_dir: Path) -> None:
    """Every metrics.csv row logged once, at its step, with each tracked scalar it has
    (a column this run leaves empty, or lacks, is not logged either)."""
    import csv
    import math

    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["_step"] for row in history] == [int(row["step"]) for row in rows]
    for logged, row in zip(history, rows, strict=True):
        expected = {
            name: pytest.approx(float(row[column]), rel=1e-6)
            for column, name in SCALARS.items()
            if row.get(column) not in (None, "") and math.isfinite(float(row[column]))
        }
        assert {name: value for name, value in logged.items() if not name.startswith("_")} == expected
    assert {"train/loss", "train/objective", "val/loss", "val/accuracy"} <= set(history[0])


def finished(run_dir: Path) -> list[OfflineRun]:
    """The run's offline W&B runs once W&B's service has written everything out (it
    flushes its log on a timer; a test reads the file at once)."""
    import wandb

    wandb.teardown()
    return offline_runs(run_dir)


# ---------------------------------------------------------------------------


def test_wandb_gets_the_config_every_row_and_the_summary_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    run_dir = crashed_run(tmp_path, "wb", ["wandb"], monkeypatch)
    summary = json.loads((run_dir / "summary.json").read_text())
    [first] = finished(run_dir)
    assert summary["wandb_run_id"] == first.run_id and summary["wandb_project"] == "flood"
    assert (first.project, first.name, first.group) == ("flood", "wb", "")
    assert first.config["train"]["b"] == 0.66 and first.config["train"]["mode"] == "flooding"
    assert first.config["output"]["report_to"] == ["wandb"]
    assert first.exit_code == 1 and first.summary["status"] == "failed"
    assert_rows_match_csv(first.history, run_dir)  # steps 6 and 12

    resume_training(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    first, second = finished(run_dir)
    assert summary["wandb_run_id"] == first.run_id == second.run_id  # the same W&B run, continued
    assert second.config == first.config
    # Rows written before the crash were logged once; the resumed rows once more each.
    assert_rows_match_csv(first.history + second.history, run_dir)
    assert [row["_step"] for row in second.history] == [18, 24]
    assert second.exit_code == 0
    assert second.summary["status"] == "completed" and second.summary["resumed"] == 1
    assert second.summary["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert "tracker_gaps" not in summary


def test_wandb_project_from_the_environment_and_a_sweeps_runs_grouped_under_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "spam-study")
    monkeypatch.setenv("FLOOD_SWEEP", "b-grid")  # what a sweep's worker sets for its runs
    result = run_training(load_config(config(tmp_path, "grouped", ["wandb"])))
    [run] = finished(result.run_dir)
    assert (run.project, run.group, run.name) == ("spam-study", "b-grid", "grouped")
    assert json.loads((result.run_dir / "summary.json").read_text())["wandb_project"] == "spam-study"
    assert_rows_match_csv(run.history, result.run_dir)


def test_a_sweep_worker_names_its_sweep_for_the_runs_it_trains(tmp_path, monkeypatch):
    from flood_cli.sweep import worker

    seen = {}

    def fake_work(spec, log, verbose, stop):
        seen["sweep"] = os.environ.get("FLOOD_SWEEP")
        return 0

    monkeypatch.setattr(worker, "_work", fake_work)

    class Spec:
        name = "b-grid"

    worker.work(Spec())  # type: ignore[arg-type]
    assert seen == {"sweep": "b-grid"}
    assert "FLOOD_SWEEP" not in os.environ  # set only while the worker works


def test_wandb_not_installed_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(FloodError) as caught:
        run_training(load_config(config(tmp_path, "missing", ["wandb"])))
    assert str(caught.value) == (
        "output.report_to lists wandb, but the wandb package is not installed; "
        "pip install 'flood-cli[wandb]', or drop wandb from --report-to"
    )
    assert not (tmp_path / "runs" / "missing").exists()


def test_wandb_online_without_an_api_key_is_one_line_before_the_data_is_loaded(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login user password secret\n")  # a key, but for another host
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    no_loading(monkeypatch)
    with pytest.raises(FloodError) as caught:  # wandb.init would ask for a key at the terminal
        run_training(load_config(config(tmp_path, "nokey", ["wandb"])))
    assert str(caught.value) == (
        f"W&B has no API key (WANDB_API_KEY is not set and {netrc} has no entry for api.wandb.ai); run wandb login, "
        "or set WANDB_MODE=offline (wandb sync uploads later), or drop wandb from --report-to"
    )
    assert not (tmp_path / "runs" / "nokey").exists()


def test_wandb_online_with_a_key_in_netrc_passes_the_check(tmp_path, monkeypatch):
    from flood_cli.runs.tracking import check_trackers

    monkeypatch.delenv("WANDB_MODE")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    check_trackers(["wandb"], tmp_path)  # no error: wandb login was done


def test_a_wandb_path_that_is_a_file_refuses_the_resume_in_one_line(tmp_path, monkeypatch):
    import shutil

    run_dir = crashed_run(tmp_path, "wbfile", ["wandb"], monkeypatch)
    shutil.rmtree(run_dir / "wandb")
    (run_dir / "wandb").write_text("not a folder")
    before = run_files(run_dir)
    no_loading(monkeypatch)
    with pytest.raises(FloodError) as caught:
        resume_training(run_dir)
    assert str(caught.value) == (
        f"{run_dir / 'wandb'} is not a folder (W&B writes its run files there); move it away, or drop wandb from --report-to"
    )
    assert run_files(run_dir) == before


def test_a_sweeps_runs_are_a_wandb_group_named_after_the_sweep(tmp_path):
    """The real thing: flood sweep's worker process trains both runs of the sweep."""
    import yaml

    from tests.sweep.test_sweep import flood, tiny_config

    base = tiny_config(tmp_path)
    raw = yaml.safe_load(base.read_text())
    raw["output"]["report_to"] = ["wandb"]
    base.write_text(yaml.safe_dump(raw))
    result = flood("sweep", "-c", str(base), "--b", "0.2", "--seeds", "1", "--workers", "1", "--out", str(tmp_path / "sweeps"), "--name", "wbsw", env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    runs = tmp_path / "sweeps" / "wbsw" / "runs"
    logged = {path.name: offline_runs(path) for path in sorted(runs.iterdir())}
    assert {name: [(run.group, run.name, run.exit_code) for run in found] for name, found in logged.items()} == {
        "baseline-s1": [("wbsw", "baseline-s1", 0)],
        "flooding-b0.2-s1": [("wbsw", "flooding-b0.2-s1", 0)],
    }
    for name, [run] in logged.items():
        assert_rows_match_csv(run.history, runs / name)


def test_wandb_that_fails_mid_run_is_warned_once_and_its_run_ended_and_the_flood_run_completes(tmp_path, monkeypatch):
    from wandb.sdk.wandb_run import Run

    from tests.runs.test_tracking import Warnings

    real = Run.log
    calls = {"n": 0}

    def fails_after_the_first_row(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Run, "log", fails_after_the_first_row)
    warnings = Warnings()
    result = run_training(load_config(config(tmp_path, "wbfull", ["wandb"])), warnings)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    error = "OSError: [Errno 28] No space left on device"
    assert summary["tracker_gaps"] == {"wandb": {"steps": [12, 18, 24], "error": error}}
    assert warnings.lines == [
        f"wandb failed at step 12 ({error}); training goes on without it, metrics.csv keeps every row",
        f"wandb lacks 3 of 4 evaluation row(s), at step(s) 12, 18, 24 ({error}); metrics.csv has every row",
    ]
    [run] = finished(result.run_dir)
    assert [row["_step"] for row in run.history] == [6]
    assert run.exit_code == 1  # ended when it failed, not left open
