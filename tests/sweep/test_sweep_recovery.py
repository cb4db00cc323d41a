"""A sweep never loses, doubles or tramples a run: the storage and queue side.

The runs of sweep.yaml are the truth and trials are claims on them. These tests drive
the queue functions directly on a journal in tmp_path, with training faked (a run
"trains" by writing a completed summary.json and a line in trained.log), so that they
take seconds: a worker killed after each write of the protocol, a cut journal line, a
run folder another process holds, failures retried, a completed run deleted by hand."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from flood_cli.core.errors import FloodError
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import lease as sweep_lease
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from flood_cli.sweep import worker as sweep_worker
from tests.conftest import ROOT, small_config, write_config

# The fake training, also run inside worker processes (see WORKER below).
FAKE = r'''
import json, os, sys, types
from pathlib import Path


def install(log_path, interrupt_marker=None, fail=None):
    """flood_cli.train.entry / flood_cli.train.checkpoint without torch: a run writes a completed
    summary (best_val_loss = seed / 10) and one line in log_path. The run named in
    interrupt_marker's file stops once as a signal would (KeyboardInterrupt); fail, an
    exception to raise instead of training."""
    class NullReporter:
        live_loss_every = 0
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    def train(run_dir, seed):
        if interrupt_marker and Path(interrupt_marker).is_file() and Path(interrupt_marker).read_text() == run_dir.name:
            Path(interrupt_marker).unlink()
            raise KeyboardInterrupt
        if fail is not None:
            raise fail
        run_dir.mkdir(exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "best_val_loss": seed / 10, "best_val_accuracy": 0.5}))
        with open(log_path, "a") as handle:
            handle.write(run_dir.name + "\n")

    def run_training(config, reporter):
        train(Path(config.output.dir) / config.output.name, config.train.seed)

    def resume_training(run_dir, reporter):
        train(Path(run_dir), int(Path(run_dir).name.rsplit("-s", 1)[1]))

    train_module = types.ModuleType("flood_cli.train.entry")
    train_module.NullReporter = NullReporter
    train_module.run_training = run_training
    train_module.resume_training = resume_training
    checkpoint_module = types.ModuleType("flood_cli.train.checkpoint")
    checkpoint_module.last_checkpoint = lambda run_dir: Path(run_dir) / "checkpoints" / "last.pt"
    sys.modules["flood_cli.train.entry"] = train_module
    sys.modules["flood_cli.train.checkpoint"] = checkpoint_module
'''
fake = types.ModuleType("fake_training")
exec(FAKE, fake.__dict__)

WORKER = FAKE + r'''
sys.path.insert(0, sys.argv[1])
install(sys.argv[3], sys.argv[4])
from flood_cli.sweep import spec as sweep_spec, storage as sweep_storage, lease as sweep_lease, queue as sweep_queue, create as sweep_create, worker as sweep_worker
try:
    sweep_worker.work(sweep_create.read_spec(Path(sys.argv[2])))
except BaseException:
    sys.exit(130)  # interrupted: its run was queued again
'''


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """Install the fake training in this process; returns the trained.log path."""
    log = tmp_path / "trained.log"
    saved = {name: sys.modules.get(name) for name in ("flood_cli.train.entry", "flood_cli.train.checkpoint", "flood_cli.core.progress")}
    fake.install(str(log))
    sys.modules.pop("flood_cli.core.progress", None)
    yield log
    for name, module in saved.items():
        # The package's attribute too: `from flood_cli.core import progress` reads it, and
        # it would otherwise stay the module imported while the fake was installed.
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent)
        if module is None:
            sys.modules.pop(name, None)
            if package is not None and hasattr(package, child):
                delattr(package, child)
        else:
            sys.modules[name] = module
            if package is not None:
                setattr(package, child, module)


def make_sweep(tmp_path: Path, name: str = "sw") -> sweep_spec.SweepSpec:
    """baseline and flooding b=0.1, seeds 1 and 2: four runs."""
    config = write_config(tmp_path, small_config(), "base.yaml")
    return sweep_create.create_sweep(config, None, {"train.b": [0.1]}, [1, 2], [], 0, tmp_path, name, None, None)


RUNS = ["baseline-s1", "baseline-s2", "flooding-b0.1-s1", "flooding-b0.1-s2"]


def trials(spec: sweep_spec.SweepSpec) -> list:
    return sweep_storage.load_study(sweep_storage.open_storage(spec.storage_url), spec.grid_study).get_trials(deepcopy=False)


def trained(log: Path) -> list[str]:
    return sorted(log.read_text().split()) if log.exists() else []


def assert_every_run_completed_once(spec: sweep_spec.SweepSpec, log: Path) -> None:
    """Each run of sweep.yaml trained exactly once, and reported once, completed, with
    its own summary's value."""
    assert trained(log) == RUNS
    finished = sweep_queue.finished_trials(spec, sweep_storage.open_storage(spec.storage_url))
    assert sorted(item.label for item in finished) == RUNS
    for item in finished:
        assert item.error is None
        summary = json.loads((spec.runs_dir / item.label / "summary.json").read_text())
        assert summary["status"] == "completed" and item.value == summary["best_val_loss"]


def claim_as_dead_worker(spec: sweep_spec.SweepSpec, number: int) -> None:
    """Trial ``number`` RUNNING, claimed by a worker of this host that is gone."""
    storage = sweep_storage.open_storage(spec.storage_url)
    study = sweep_storage.load_study(storage, spec.grid_study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    from optuna.trial import TrialState

    assert storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    storage.set_trial_user_attr(trial_id, "host", __import__("socket").gethostname())
    storage.set_trial_user_attr(trial_id, "pid", 2**22 + 12345)  # above pid_max: no such process
    storage.set_trial_user_attr(trial_id, "pid_ns", sweep_lease._pid_namespace())  # in this PID namespace


# ---------------------------------------------------------------------------
# Item 1: a folder another process holds is never deleted nor reused


def test_a_worker_waits_for_a_run_folder_another_process_holds_instead_of_replacing_it(tmp_path, fake_training, monkeypatch):
    spec = make_sweep(tmp_path)
    run_dir = spec.runs_dir / "baseline-s1"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    (run_dir / "owner.txt").write_text("the live owner's file")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(sweep_worker, "LOCK_POLL_S", 0.05, raising=False)
        result = {}
        worker = threading.Thread(target=lambda: result.update(sweep_worker._run_one(spec, {"train.mode": "baseline"}, 1, "baseline-s1", None)))
        worker.start()
        time.sleep(1.5)
        # The reclaiming worker left the folder to its live owner: not deleted, not trained.
        assert (run_dir / "owner.txt").read_text() == "the live owner's file"
        assert trained(fake_training) == []
        assert worker.is_alive()
        # The owner completes its run and lets the folder go: the waiter reads it back.
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "best_val_loss": 0.25}))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert result == {"status": "completed", "best_val_loss": 0.25}
    assert trained(fake_training) == [] and (run_dir / "owner.txt").exists()


def test_a_folder_whose_owner_died_before_its_first_evaluation_is_trained_anew(tmp_path, fake_training):
    spec = make_sweep(tmp_path)
    run_dir = spec.runs_dir / "baseline-s1"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    summary = sweep_worker._run_one(spec, {"train.mode": "baseline"}, 1, "baseline-s1", None)
    assert summary == {"status": "completed", "best_val_loss": 0.1, "best_val_accuracy": 0.5}
    assert trained(fake_training) == ["baseline-s1"]


# ---------------------------------------------------------------------------
# Item 2: no crash between two writes loses a run


def test_a_trial_failed_without_its_retry_is_queued_again_by_resume(tmp_path, fake_training):
    """_requeue / reclaim_stale died between "mark FAIL" and "enqueue again"."""
    spec = make_sweep(tmp_path)
    storage = sweep_storage.open_storage(spec.storage_url)
    queue = sweep_queue.Queue(storage, sweep_storage.load_study(storage, spec.grid_study))
    claimed = queue.claim()
    queue.study.tell(claimed.number, state=sweep_worker._state("FAIL"))  # ... and the process died here
    sweep_queue.requeue_failed(spec)
    sweep_worker.work(spec)
    assert_every_run_completed_once(spec, fake_training)


def test_a_worker_that_starts_queues_again_a_run_left_without_a_claim(tmp_path, fake_training):
    spec = make_sweep(tmp_path)
    storage = sweep_storage.open_storage(spec.storage_url)
    queue = sweep_queue.Queue(storage, sweep_storage.load_study(storage, spec.grid_study))
    claimed = queue.claim()
    queue.study.tell(claimed.number, state=sweep_worker._state("FAIL"))
    lines = []
    sweep_worker.work(spec, log=lines.append)  # no --resume: a worker joining the sweep
    assert_every_run_completed_once(spec, fake_training)
    assert any(line.startswith("baseline-s1: its trial #0 stopped") and line.endswith("queued again") for line in lines), lines


def _worker(spec: sweep_spec.SweepSpec, log: Path, marker: Path, **env: str) -> subprocess.CompletedProcess:
    script = log.parent / "worker.py"
    script.write_text(WORKER)
    return subprocess.run(
        [sys.executable, str(script), str(ROOT), spec.folder, str(log), str(marker)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


def test_a_worker_killed_after_any_write_of_the_protocol_loses_and_doubles_no_run(tmp_path, fake_training, monkeypatch):
    """Four runs: baseline-s1 held by a dead worker (reclaimed: FAIL, enqueue),
    baseline-s2 and flooding-b0.1-s1 claimed, trained and told (claim, heartbeat, two
    attributes, tell), flooding-b0.1-s2 interrupted (claim, heartbeat, FAIL, enqueue).
    The worker is killed after write k, for every k; a worker started next (after a
    --resume) finishes the sweep: every run completed exactly once."""
    monkeypatch.setattr(sweep_lease, "GRACE_S", 0.0)  # a claim the dead worker had no time to mark is stale at once
    kills = 0
    for k in range(1, 18):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        spec = make_sweep(folder)
        claim_as_dead_worker(spec, 0)
        log, marker = folder / "trained.log", folder / "interrupt"
        marker.write_text("flooding-b0.1-s2")
        done = _worker(spec, log, marker, **{sweep_storage.DIE_AFTER_WRITE if hasattr(sweep_storage, "DIE_AFTER_WRITE") else "X": str(k)})
        kills += done.returncode == 86
        assert done.returncode in (86, 130), done.stderr[-2000:]
        if k == 17:
            assert done.returncode == 130  # every write done: the interrupted run is queued again
        fake.install(str(log))
        sweep_queue.requeue_failed(spec)
        sweep_worker.work(spec)
        try:
            assert_every_run_completed_once(spec, log)
        except AssertionError as exc:
            raise AssertionError(f"killed after write {k}: {exc}") from None
    assert kills == 16


# ---------------------------------------------------------------------------
# Item 5: a cut journal line


def _finished_sweep(tmp_path: Path, log: Path) -> sweep_spec.SweepSpec:
    """A sweep whose four runs a worker process (gone now) completed."""
    spec = make_sweep(tmp_path)
    done = _worker(spec, log, tmp_path / "no-interrupt")
    assert done.returncode == 0, done.stderr[-2000:]
    return spec


def test_a_cut_last_journal_line_is_set_aside_and_the_sweep_resumes_again_and_again(tmp_path, fake_training, capsys):
    spec = _finished_sweep(tmp_path, fake_training)
    journal = Path(spec.storage_url)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-60])  # a full disk cut the last operation (the last run's tell)
    cut_line = whole[:-60][whole[:-61].rfind(b"\n") + 1:]
    for _resume in range(3):
        sweep_queue.requeue_failed(spec)
        sweep_worker.work(spec)
    err = capsys.readouterr().err
    aside = sorted(journal.parent.glob("study.journal.cut-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == cut_line
    assert err.count("its last line was cut") == 1 and aside[0].name in err
    assert journal.read_bytes().startswith(whole[: len(whole) - 60 - len(cut_line)])
    # The run whose completion was cut is read back from its folder, not trained again.
    assert_every_run_completed_once(spec, fake_training)


def test_a_damaged_or_emptied_journal_is_one_line_naming_it(tmp_path, fake_training):
    spec = _finished_sweep(tmp_path, fake_training)
    journal = Path(spec.storage_url)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3] + [b"{not json\n"] + lines[3:]))
    with pytest.raises(FloodError, match=rf"the sweep journal {re.escape(str(journal))} is damaged at line 4 of {len(lines) + 1}; .*head -n 3"):
        sweep_queue.requeue_failed(spec)
    journal.write_bytes(b"")
    with pytest.raises(FloodError, match=rf"the sweep journal {re.escape(str(journal))} holds no study .*restore it from a backup"):
        sweep_queue.requeue_failed(spec)
    journal.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(FloodError, match=rf"the sweep journal {re.escape(str(journal))} "):
        sweep_queue.requeue_failed(spec)


# ---------------------------------------------------------------------------
# Item 6: a run's outcome is its latest trial's


def test_runs_that_failed_then_completed_on_resume_are_completed(tmp_path, fake_training):
    spec = make_sweep(tmp_path)
    fake.install(str(fake_training), fail=OSError(28, "No space left on device"))
    sweep_worker.work(spec)
    finished = sweep_queue.finished_trials(spec, sweep_storage.open_storage(spec.storage_url))
    assert sorted(item.label for item in finished) == RUNS
    assert all(item.error == "OSError: [Errno 28] No space left on device" for item in finished)
    fake.install(str(fake_training))
    assert sweep_queue.requeue_failed(spec) == 4
    sweep_worker.work(spec)
    assert_every_run_completed_once(spec, fake_training)
    assert sweep_queue.requeue_failed(spec) == 0  # and on every later resume


# ---------------------------------------------------------------------------
# Item 11: a completed run folder deleted by hand


def test_a_completed_run_whose_folder_is_gone_is_named_and_trained_again(tmp_path, fake_training, capsys):
    spec = make_sweep(tmp_path)
    sweep_worker.work(spec)
    import shutil

    shutil.rmtree(spec.runs_dir / "baseline-s2")
    fake_training.write_text("\n".join(run for run in RUNS if run != "baseline-s2") + "\n")
    sweep_queue.requeue_failed(spec)
    assert "baseline-s2: it completed, but runs/baseline-s2 (or its summary.json) is gone; queued again" in capsys.readouterr().err
    sweep_worker.work(spec)
    assert_every_run_completed_once(spec, fake_training)


def test_a_damaged_run_in_a_sweep_says_what_a_sweep_can_do(tmp_path):
    """A run whose checkpoint is damaged: flood train's advice (start again under a new
    --name) cannot help a sweep, whose run names are fixed. The error says to move the
    folder aside and resume the sweep, which trains the run anew."""
    spec = make_sweep(tmp_path)
    run_dir = spec.runs_dir / "baseline-s1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("data: {}\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "OSError: disk full"}))
    (run_dir / "metrics.csv").write_text("epoch,step,val_loss\n1,6,0.5\n")
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FloodError) as excinfo:
        sweep_worker._run_one(spec, {"train.mode": "baseline"}, 1, "baseline-s1", None)
    message = str(excinfo.value)
    assert message.startswith(f"checkpoint {run_dir / 'checkpoints' / 'last.pt'} is damaged")
    assert message.endswith(
        f"; the sweep cannot continue this run: move {run_dir} aside (or delete it) and run flood sweep --resume "
        f"{spec.folder} again, which trains it anew"
    )
    assert "--name NEW" not in message
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"not a checkpoint"


def test_a_live_trial_of_a_worker_in_another_pid_namespace_is_not_stolen(tmp_path):
    """A worker joined from another PID namespace on this host (a container, `unshare
    --pid`) cannot see the owner's pid: it must go by the heartbeat, not take the pid's
    absence for a death. In the same namespace a dead pid is stale at once."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fresh = {"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()}
    here = sweep_lease._pid_namespace()
    assert here is not None
    numbers = iter(range(1000))
    trial = lambda **attrs: types.SimpleNamespace(user_attrs={**fresh, **attrs}, datetime_start=None, number=next(numbers))  # noqa: E731
    assert not sweep_lease._is_stale(trial(pid_ns=here + 1), grace=60)  # its pid is not ours to look up
    assert not sweep_lease._is_stale(trial(), grace=60)  # a worker of before pid_ns was recorded: the heartbeat decides
    assert sweep_lease._is_stale(trial(pid_ns=here), grace=60)  # same namespace, the pid is gone: stale at once


def test_staleness_is_measured_on_the_observers_clock_so_clock_skew_makes_no_second_owner(monkeypatch):
    """A heartbeat is only compared with itself: the worker of a machine whose clock is
    an hour behind (or ahead) is live while its heartbeat changes, and stale once this
    process has seen it unchanged for the grace period by its own monotonic clock."""
    clock = [1000.0]
    monkeypatch.setattr(sweep_lease.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sweep_lease, "_SEEN", {})

    def trial(beat):
        return types.SimpleNamespace(user_attrs={"host": "another-machine", "pid": 7, "heartbeat": beat}, datetime_start=None, number=3)

    behind = time.time() - 3600  # the owner's clock is an hour behind this one's
    for tick in range(10):  # beating every 10 s for 100 s: never stale
        assert not sweep_lease._is_stale(trial(behind + 10 * tick), grace=60, study="s")
        clock[0] += 10
    ahead = time.time() + 3600  # then it stops, with a clock an hour ahead: stale after 60 s seen
    assert not sweep_lease._is_stale(trial(ahead), grace=60, study="s")
    clock[0] += 59
    assert not sweep_lease._is_stale(trial(ahead), grace=60, study="s")
    clock[0] += 2
    assert sweep_lease._is_stale(trial(ahead), grace=60, study="s")


def test_failing_heartbeats_are_logged_and_their_recovery_too(capsys):
    class Flaky:
        def __init__(self):
            self.calls = 0

        def set_trial_user_attr(self, trial_id, key, value):
            self.calls += 1
            if self.calls in (2, 3):
                raise OSError("database is gone")

    storage = Flaky()
    beat = sweep_lease.Heartbeat(types.SimpleNamespace(storage=storage), 7, every=0.01)
    beat._thread.start()
    deadline = time.time() + 10
    while storage.calls < 5 and time.time() < deadline:
        time.sleep(0.01)
    beat.__exit__(None, None, None)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("heartbeat of trial 7 failed (OSError: database is gone); failing for ")
    assert lines[1].startswith("heartbeat of trial 7 failed (OSError: database is gone)")
    assert lines[2] == "heartbeat of trial 7 written again"


# ---------------------------------------------------------------------------
# --resume of a finished sweep


def test_resume_of_a_finished_sweep_says_nothing_is_left_and_starts_no_worker(tmp_path, fake_training):
    from typer.testing import CliRunner

    from flood_cli.cli.main import app

    spec = make_sweep(tmp_path)
    sweep_worker.work(spec)
    assert_every_run_completed_once(spec, fake_training)
    result = CliRunner().invoke(app, ["sweep", "--resume", spec.folder])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"sweep sw: resuming {spec.describe()}", "nothing left to run: 4 of 4 runs complete"]
    assert not list((Path(spec.folder) / "workers").glob("worker-*.log"))  # no worker was started
    assert_every_run_completed_once(spec, fake_training)
