"""A worker owns its run by a lease: its claimed trial, renewed by heartbeats, and the
run folder's lock. A worker whose lease was taken over, or that could not renew it for
half the grace period (a storage that does not answer, a process frozen by SIGSTOP),
stops at once, exit 75, without writing another row. A worker of the sweep waits out a
storage that stops answering for a bounded time, then stops with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flood_cli.core.errors import FloodError
from flood_cli.sweep import lease as sweep_lease
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from flood_cli.sweep import worker as sweep_worker
from tests.conftest import ROOT

# A worker's lease, and a stand-in for its training: a row per 20 ms, each written
# right after the lease is checked (as the trainer calls reporter.before_write()).
OWNER = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
from flood_cli.sweep import spec as sweep_spec, storage as sweep_storage, lease as sweep_lease, queue as sweep_queue, worker as sweep_worker
storage = sweep_storage.open_storage(sys.argv[2])
queue = sweep_queue.Queue(storage, sweep_storage.load_study(storage, "lease"))
claimed = queue.claim()
with open(sys.argv[3], "a") as rows, sweep_lease.Heartbeat(queue, claimed.trial_id, what="run-x") as lease:
    print(claimed.trial_id, flush=True)
    n = 0
    while True:
        lease.check()
        rows.write(f"{n}\n")
        rows.flush()
        n += 1
        time.sleep(0.02)
'''

BEAT_S, GRACE_S = 0.2, 2.0


def _owner(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path, int]:
    url = str(tmp_path / "lease.journal")
    storage = sweep_storage.open_storage(url)
    import optuna

    study = optuna.create_study(storage=storage, study_name="lease")
    study.enqueue_trial({}, user_attrs={"run": "run-x"})
    script, rows = tmp_path / "owner.py", tmp_path / "rows.txt"
    script.write_text(OWNER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(ROOT), url, str(rows)],
        env={**os.environ, "FLOOD_SWEEP_HEARTBEAT_S": str(BEAT_S), "FLOOD_SWEEP_GRACE_S": str(GRACE_S), **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    trial_id = int(process.stdout.readline())
    return process, rows, trial_id


def _rows(path: Path) -> int:
    return len(path.read_text().splitlines())


def _wait_rows(path: Path, count: int) -> None:
    deadline = time.time() + 30
    while _rows(path) < count and time.time() < deadline:
        time.sleep(0.02)


def test_a_worker_whose_trial_was_taken_over_stops_at_its_next_heartbeat(tmp_path):
    process, rows, trial_id = _owner(tmp_path)
    _wait_rows(rows, 5)
    storage = sweep_storage.open_storage(str(tmp_path / "lease.journal"))
    assert storage.set_trial_state_values(trial_id, state=sweep_worker._state("FAIL"))  # what reclaim_stale writes
    taken = _rows(rows)
    assert process.wait(timeout=30) == sweep_lease.WORKER_FENCED
    # It found out at its next heartbeat (every 0.2 s: at most ~10 rows of 20 ms).
    assert _rows(rows) - taken <= 15
    err = process.stderr.read().strip().splitlines()
    assert err[-1] == (
        f"worker {process.pid} lost run-x: another worker took its trial as stale and queued the run again; "
        "it stops without writing more (the run continues from its last checkpoint)"
    )


def test_a_frozen_worker_thawed_after_half_the_grace_period_writes_no_other_row(tmp_path):
    """SIGSTOP beyond the grace period, as a stalled machine or a debugger would: on
    SIGCONT the worker cannot know whether its run has a new owner, so it stops before
    its next row, whichever of its threads wakes first."""
    process, rows, trial_id = _owner(tmp_path)
    _wait_rows(rows, 5)
    process.send_signal(signal.SIGSTOP)
    time.sleep(0.2)  # the stop has landed
    frozen = _rows(rows)
    time.sleep(GRACE_S + 0.5)
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=30) == sweep_lease.WORKER_FENCED
    assert _rows(rows) == frozen
    err = process.stderr.read().strip().splitlines()
    assert err[-1].startswith(f"worker {process.pid} lost run-x: its lease was not renewed for ")
    assert err[-1].endswith(
        "half the 2 s after which another worker may take the run; it stops without writing more "
        "(the run continues from its last checkpoint)"
    )


def test_a_worker_that_cannot_renew_its_lease_for_half_the_grace_period_stops_itself(tmp_path):
    """Its heartbeats fail (the database is unreachable from it, a partition): each
    failure is logged; after GRACE_S / 2 it stops, before another worker, seeing its
    heartbeat unchanged for GRACE_S, takes the run."""
    faults = tmp_path / "faults"
    faults.mkdir()
    process, rows, trial_id = _owner(tmp_path, FLOOD_SWEEP_FAULTS=str(faults))
    _wait_rows(rows, 5)
    (faults / f"heartbeat-fails-{process.pid}").touch()
    failed_at = time.monotonic()
    assert process.wait(timeout=30) == sweep_lease.WORKER_FENCED
    assert GRACE_S / 2 - BEAT_S <= time.monotonic() - failed_at <= GRACE_S  # it stopped itself in time
    err = process.stderr.read().strip().splitlines()
    assert err[0].startswith(f"heartbeat of trial {trial_id} failed (OSError: heartbeat failure injected by the test hook); failing for ")
    assert err[0].endswith("s (after 1 s this worker stops)")
    assert "lost run-x: its lease was not renewed for" in err[-1]
    # Its trial is still RUNNING, its pid gone: a worker of this host takes it at once.
    storage = sweep_storage.open_storage(str(tmp_path / "lease.journal"))
    queue = sweep_queue.Queue(storage, sweep_storage.load_study(storage, "lease"))
    assert queue.reclaim_stale(grace=GRACE_S) == [0]


def test_the_storage_is_waited_for_a_bounded_time_then_the_worker_stops_with_one_line(tmp_path, monkeypatch, capsys):
    from sqlalchemy.exc import OperationalError

    spec = sweep_spec.SweepSpec.__new__(sweep_spec.SweepSpec)
    spec.storage, spec.folder = "postgresql://flood:secret@db.example/flood", str(tmp_path / "sw")
    monkeypatch.setattr(sweep_storage.time, "sleep", lambda seconds: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "claimed"

    assert sweep_storage._retrying(spec, "claim a run", flaky) == "claimed"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert err[0].startswith("could not claim a run: the storage did not answer (OperationalError: (builtins.Exception) server closed")
    assert err[2] == "the storage answers again (claim a run)"

    clock = [0.0]
    monkeypatch.setattr(sweep_storage.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sweep_storage.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))

    def down():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(FloodError) as caught:
        sweep_storage._retrying(spec, "record a result", down)
    message = str(caught.value)
    assert message.startswith(f"the sweep's storage postgresql://flood@db.example/flood did not answer for {sweep_storage.STORAGE_RETRY_S:.0f} s (OperationalError:")
    assert message.endswith(f"this worker stops: when it is back, run flood sweep --resume {spec.folder}")
    assert "secret" not in message and "\n" not in message
    # A trial's own error is not waited out.
    with pytest.raises(ValueError):
        sweep_storage._retrying(spec, "record a result", lambda: (_ for _ in ()).throw(ValueError("Cannot tell a FAIL trial")))
