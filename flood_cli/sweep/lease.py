"""A worker's lease on its claimed trial: the heartbeat that renews it, staleness as
another process's own clock sees it, and fencing a worker that lost it."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flood_cli.sweep.spec import _first_line
from flood_cli.sweep.storage import _env_seconds, _wrote, masked

# A worker renews its lease on its trial every HEARTBEAT_S. Another process takes a
# trial as stale when it has seen its heartbeat unchanged for GRACE_S by its own clock;
# the owner stops itself when it could not renew for GRACE_S / 2 by its own clock. Only
# durations measured on one machine are compared, so clock skew cannot make two owners.
HEARTBEAT_S = _env_seconds("FLOOD_SWEEP_HEARTBEAT_S", 10.0)
GRACE_S = _env_seconds("FLOOD_SWEEP_GRACE_S", 60.0)
FAULTS = "FLOOD_SWEEP_FAULTS"  # tests: a folder whose file heartbeat-fails-<pid> makes that worker's heartbeats fail
WRITER_LOG = "FLOOD_SWEEP_WRITER_LOG"  # tests: an append-only log of which process wrote which run's rows


def _pid_namespace() -> int | None:
    """This process's PID namespace (Linux): a pid means the same process only inside one.
    A worker in a container or under `unshare --pid` shares the host's name, not its pids."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


# What this process has seen of other workers' heartbeats: (study, trial) -> (the
# heartbeat's value, this machine's monotonic time when it was first seen so).
_SEEN: dict[tuple[str, int], tuple[Any, float]] = {}


def _is_stale(trial: Any, grace: float, study: str = "") -> bool:
    """Whether a RUNNING trial's worker is gone: its process no longer exists (on this
    host, in this PID namespace: at once), or this process has seen its heartbeat
    unchanged for ``grace`` seconds of its own monotonic clock (a worker elsewhere, or a
    frozen one). The heartbeat's value is only compared with itself, never with this
    machine's clock: a worker whose clock runs behind or ahead is judged the same."""
    attrs = trial.user_attrs
    here = _pid_namespace()
    if attrs.get("host") == socket.gethostname() and "pid" in attrs and here is not None and attrs.get("pid_ns") == here and not _alive(int(attrs["pid"]), attrs.get("pid_start")):
        return True
    beat = (attrs.get("heartbeat"), attrs.get("pid"), attrs.get("host"))
    now = time.monotonic()
    key = (study, trial.number)
    seen = _SEEN.get(key)
    if seen is None or seen[0] != beat:
        _SEEN[key] = (beat, now)
        return False
    return now - seen[1] > grace


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


class Heartbeat:
    """A worker's lease on its claimed trial, renewed every HEARTBEAT_S seconds from a
    thread. The lease is lost when another process took the trial as stale (the renewal
    finds it ended) or when it could not be renewed for half the grace period by this
    machine's clock (a storage that does not answer, a process frozen by SIGSTOP): the
    worker then stops at once, without writing another byte (:meth:`fence`), since the
    run may have a new owner. :meth:`check` is called before each training step's
    writes, so a worker thawed after the grace period stops before its next row."""

    def __init__(self, queue: Any, trial_id: int, every: float | None = None, what: str = ""):
        self.queue, self.trial_id = queue, trial_id
        self.every = HEARTBEAT_S if every is None else every
        self.what = what or f"trial {trial_id}"
        self.renewed = time.monotonic()
        self.marked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flood-sweep-heartbeat", daemon=True)

    def mark(self) -> None:
        """Record who owns the trial (host, pid and its start, PID namespace) and a first beat."""
        storage, pid = self.queue.storage, os.getpid()
        storage.set_trial_user_attr(self.trial_id, "host", socket.gethostname())
        storage.set_trial_user_attr(self.trial_id, "pid", pid)
        storage.set_trial_user_attr(self.trial_id, "pid_start", _process_start(pid))
        storage.set_trial_user_attr(self.trial_id, "pid_ns", _pid_namespace())
        storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        _wrote()
        self.renewed = time.monotonic()
        self.marked = True

    def __enter__(self) -> Heartbeat:
        if not self.marked:
            self.mark()
        self._thread.start()
        return self

    def _renew(self) -> None:
        faults = os.environ.get(FAULTS)
        if faults and (Path(faults) / f"heartbeat-fails-{os.getpid()}").exists():
            raise OSError("heartbeat failure injected by the test hook")
        self.queue.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())

    def _beat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        failing_since: float | None = None
        while not self._stop.wait(self.every):
            self.check()  # woken after a freeze: the lease may be another's by now
            started = time.monotonic()
            try:
                self._renew()
            except UpdateFinishedTrialError:
                self.fence("another worker took its trial as stale and queued the run again")
            except Exception as exc:  # a storage hiccup: the next beat tries again, and the log says so
                failing_since = failing_since or started
                print(
                    f"heartbeat of trial {self.trial_id} failed ({type(exc).__name__}: {masked(_first_line(exc))}); "
                    f"failing for {time.monotonic() - failing_since:.0f} s (after {GRACE_S / 2:.0f} s this worker stops)",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                if failing_since is not None:
                    print(f"heartbeat of trial {self.trial_id} written again", file=sys.stderr, flush=True)
                failing_since = None
                self.renewed = started

    def check(self) -> None:
        """Stop this worker if its lease may have lapsed (not renewed for GRACE_S / 2)."""
        silent = time.monotonic() - self.renewed
        if silent > GRACE_S / 2 and not self._stop.is_set():
            self.fence(f"its lease was not renewed for {silent:.0f} s, half the {GRACE_S:.0f} s after which another worker may take the run")

    def fence(self, why: str) -> None:
        """Lost the lease: exit now (as a kill would; the run folder stays consistent),
        so that nothing more is written by a process that may no longer own the run."""
        print(f"worker {os.getpid()} lost {self.what}: {why}; it stops without writing more (the run continues from its last checkpoint)", file=sys.stderr, flush=True)
        os._exit(WORKER_FENCED)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class _LeaseReporter:
    """Checks the worker's lease before each step's writes (rows, checkpoints), and
    notes each row in the test hook's writer log."""

    def __init__(self, inner: Any, lease: Heartbeat | None, run: str):
        self.inner, self.lease, self.run = inner, lease, run
        self.live_loss_every = inner.live_loss_every
        self.log = os.environ.get(WRITER_LOG)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def before_write(self) -> None:
        if self.lease is not None:
            self.lease.check()
        self.inner.before_write()

    def evaluation(self, row: dict[str, Any]) -> None:
        if self.log:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {self.run} {int(row['step'])}\n".encode())
            finally:
                os.close(fd)
        self.inner.evaluation(row)


WORKER_FENCED = 75  # a worker's exit code when it lost its lease (EX_TEMPFAIL): its run goes on elsewhere or on --resume
