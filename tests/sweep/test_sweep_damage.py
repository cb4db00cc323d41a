"""A sweep folder damaged by hand (a folder or file of it deleted): `flood sweep --resume`
makes again what it can (workers/, runs/, sweep.yaml from the study's record) and says in
one line what is missing and what to do otherwise. Training is faked as in
test_sweep_recovery, so these take seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flood_cli.core.errors import FloodError
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from flood_cli.sweep import worker as sweep_worker
from tests.conftest import ROOT
from tests.sweep.test_sweep_recovery import RUNS, assert_every_run_completed_once, fake_training, make_sweep, trained  # noqa: F401


def finished(tmp_path: Path) -> sweep_spec.SweepSpec:
    """A sweep whose four runs are completed (fake training)."""
    spec = make_sweep(tmp_path)
    sweep_worker.work(spec)
    return spec


def flood(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flood_cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_a_deleted_workers_folder_is_made_again_without_a_word(tmp_path, fake_training):
    spec = finished(tmp_path)
    shutil.rmtree(Path(spec.folder) / "workers")
    result = flood("sweep", "--resume", spec.folder)  # finished: it starts no worker, and needs no workers/
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-2000:]
    from flood_cli.sweep.driver import start_workers

    # A sweep with runs left starts its workers. Before: "error: cannot write or read
    # …/workers/worker-1.log: No such file or directory; check the disk and permissions"
    workers = start_workers(spec, 1, verbose=False)
    assert [worker.wait(timeout=300) for worker in workers] == [0]  # nothing to claim: it ends
    assert (Path(spec.folder) / "workers" / "worker-1.log").is_file()


def test_a_deleted_runs_folder_queues_every_completed_run_again_in_one_line_each(tmp_path, fake_training, capsys):
    spec = finished(tmp_path)
    shutil.rmtree(spec.runs_dir)
    # --report on it: before, "error: cannot write or read …/runs: No such file or directory; check the disk and permissions"
    report = flood("sweep", "--report", spec.folder)
    assert (report.returncode, report.stdout, report.stderr) == (0, "no completed runs yet\n", "")
    capsys.readouterr()
    fake_training.write_text("")
    sweep_queue.requeue_failed(spec)
    assert capsys.readouterr().err.splitlines() == [
        f"{run}: it completed, but runs/{run} (or its summary.json) is gone; queued again" for run in RUNS
    ]
    sweep_worker.work(spec)
    assert_every_run_completed_once(spec, fake_training)


def test_a_deleted_sweep_yaml_is_written_again_from_the_studys_record(tmp_path, fake_training, capsys):
    spec = finished(tmp_path)
    path = Path(spec.folder) / "sweep.yaml"
    before = yaml.safe_load(path.read_text())
    path.unlink()
    capsys.readouterr()
    # Before: "… is not a sweep folder (no sweep.yaml); pass the folder that flood sweep printed"
    again = sweep_create.read_spec(Path(spec.folder))
    assert capsys.readouterr().err == f"{path} was missing: written again from the sweep's record in {Path(spec.folder) / 'study.journal'}\n"
    assert yaml.safe_load(path.read_text()) == before and again == spec
    fake_training.write_text("\n".join(RUNS) + "\n")
    assert sweep_queue.requeue_failed(again) == 0
    sweep_worker.work(again)
    assert capsys.readouterr().err == ""  # nothing queued again, nothing said
    assert_every_run_completed_once(again, fake_training)  # and none trained twice


def test_a_deleted_journal_is_one_line_and_no_empty_journal_is_left(tmp_path, fake_training):
    spec = finished(tmp_path)
    journal = Path(spec.folder) / "study.journal"
    journal.unlink()
    for _ in range(2):  # before: "holds no study (it is empty or was replaced)", and an empty journal made
        with pytest.raises(FloodError) as caught:
            sweep_create.read_spec(Path(spec.folder))
        assert str(caught.value) == (
            f"the sweep journal {journal} is missing (it records which runs are done); restore it from a backup, or start a new "
            f"sweep (the runs in {spec.runs_dir} stay readable: flood compare {spec.runs_dir})"
        )
        assert not journal.exists()


def test_sweep_yaml_and_journal_both_gone_or_no_record_is_one_line(tmp_path, fake_training):
    spec = finished(tmp_path)
    folder = Path(spec.folder)
    journal = folder / "study.journal"
    (folder / "sweep.yaml").unlink()
    journal.unlink()
    with pytest.raises(FloodError) as caught:  # before: "… is not a sweep folder (no sweep.yaml)"
        sweep_create.read_spec(folder)
    assert str(caught.value) == (
        f"{folder / 'sweep.yaml'} and {journal} are both missing, so nothing says what the sweep is or which runs are done; "
        f"restore them from a backup (a sweep on a database: join it with flood sweep --storage URL --study NAME --worker --out {folder})"
    )
    # A journal of another kind of study (no flood sweep record in it): said so.
    journal.write_bytes(b"")
    import optuna

    optuna.create_study(study_name="other", storage=sweep_storage.open_storage(str(journal)))
    with pytest.raises(FloodError) as caught:
        sweep_create.read_spec(folder)
    assert str(caught.value) == (
        f"{folder / 'sweep.yaml'} is missing and {journal} holds no record of the sweep to write it from; restore sweep.yaml from a backup"
    )
    # A folder that never was a sweep keeps its message.
    with pytest.raises(FloodError) as caught:
        sweep_create.read_spec(tmp_path / "nothing")
    assert str(caught.value) == f"{tmp_path / 'nothing'} is not a sweep folder (no sweep.yaml); pass the folder that flood sweep printed"
