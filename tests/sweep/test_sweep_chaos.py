"""The chaos test: a 3-worker sweep, on the journal and on PostgreSQL, while a driver
kills workers (SIGKILL), freezes one beyond the grace period (SIGSTOP, then SIGCONT)
and makes one worker's heartbeats fail for a while. At the end every run is completed
exactly once, no run folder was written by two processes at once (an append-only log
of which process wrote which row), and every run's metrics equal an uninterrupted
run's, apart from elapsed_s. Real (tiny) training; the heartbeat is 0.5 s and the grace
period 8 s here (10 s and 60 s by default)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import lease as sweep_lease
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from tests.conftest import ROOT, csv_bytes_without_time, small_config, write_config

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

BEAT_S, GRACE_S = 0.5, 8.0  # the owner fences at 4 s without a renewal: slack for a loaded machine
WORKER_ENV = {"FLOOD_SWEEP_HEARTBEAT_S": str(BEAT_S), "FLOOD_SWEEP_GRACE_S": str(GRACE_S), "OMP_NUM_THREADS": "1"}
SEEDS = [1, 2, 3]
ROWS = 4  # evaluations a run writes (steps 6, 12, 18, 24)
RUNS = sorted(f"{setting}-s{seed}" for setting in ("baseline", "flooding-b0.5") for seed in SEEDS)


def _config(folder: Path) -> Path:
    config = small_config(train={"epochs": 3, "batch_size": 16, "eval_every": 6}, output={"checkpoint_every": 3})
    config["data"].update(max_train_examples=128, max_val_examples=32, max_length=32)  # 8 steps an epoch, 24 in all
    return write_config(folder, config, "base.yaml")


def _sweep(folder: Path, name: str, storage: str | None = None) -> sweep_spec.SweepSpec:
    return sweep_create.create_sweep(_config(folder), None, {"train.b": [0.5]}, SEEDS, [], 0, folder / "sweeps", name, storage, name if storage else None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same sweep, uninterrupted (one worker, with the chaos workers' thread count):
    its runs' CSVs."""
    folder = tmp_path_factory.mktemp("reference")
    spec = _sweep(folder, "reference")
    done = subprocess.run(
        [sys.executable, "-m", "flood_cli", "sweep", "--worker", "--resume", spec.folder],
        cwd=ROOT, env={**os.environ, **WORKER_ENV}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0 and f"worker done: {len(RUNS)} trial(s)" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    return spec.runs_dir


def _rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "metrics.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


class Driver:
    def __init__(self, spec: sweep_spec.SweepSpec, folder: Path, seed: int):
        self.spec, self.rng = spec, random.Random(seed)
        self.faults = folder / "faults"
        self.faults.mkdir()
        self.writers = folder / "writers.log"
        self.env = {**os.environ, **WORKER_ENV, sweep_lease.FAULTS: str(self.faults), sweep_lease.WRITER_LOG: str(self.writers)}
        self.workers: list[subprocess.Popen] = []
        self.ended: list[int] = []  # exit codes of the workers gone
        self.events: list[str] = []
        self.storage = None

    def start(self) -> subprocess.Popen:
        log = open(Path(self.spec.folder) / "workers" / f"chaos-{len(self.workers) + len(self.ended) + 1}.log", "a")  # noqa: SIM115 (the worker's stdout; closed once Popen has it)
        worker = subprocess.Popen(
            [sys.executable, "-m", "flood_cli", "sweep", "--worker", "--resume", self.spec.folder],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.workers.append(worker)
        return worker

    def reap(self) -> None:
        for worker in list(self.workers):
            if worker.poll() is not None:
                self.workers.remove(worker)
                self.ended.append(worker.returncode)

    def owners(self, last: int = ROWS - 2) -> dict[int, str]:
        """The live workers that hold a run past its first row and far from its last
        (its next writes are still to come, so a frozen one meets its fence): pid -> run."""
        from optuna.trial import TrialState

        if self.storage is None:  # opened once: a PostgreSQL storage takes seconds to open under load
            self.storage = sweep_storage.open_storage(self.spec.storage_url)
        study = sweep_storage.load_study(self.storage, self.spec.grid_study)
        pids = {worker.pid for worker in self.workers if worker.poll() is None}
        held = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid, run = trial.user_attrs.get("pid"), trial.user_attrs.get("run")
            if pid in pids and run and 1 <= _rows(self.spec.runs_dir / run) <= last:
                held[pid] = run
        return held

    def victim(self, timeout: float = 120, last: int = ROWS - 2) -> tuple[subprocess.Popen, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            held = self.owners(last)
            if held:
                pid = self.rng.choice(sorted(held))
                return next(worker for worker in self.workers if worker.pid == pid), held[pid]
            time.sleep(0.1)
        raise AssertionError(f"no worker held a run past its first row within {timeout} s ({self.events})")

    def wait_gone(self, worker: subprocess.Popen, timeout: float = 60) -> int:
        code = worker.wait(timeout=timeout)
        self.reap()
        return code


def _chaos(spec: sweep_spec.SweepSpec, folder: Path, reference: Path) -> None:
    seed = int(os.environ.get("FLOOD_CHAOS_SEED", time.time_ns() % 10_000))
    driver = Driver(spec, folder, seed)
    started = time.time()
    try:
        for _ in range(3):
            driver.start()
        # 1. SIGKILL a worker in the middle of a run; another takes the run over.
        worker, run = driver.victim()
        worker.kill()
        assert driver.wait_gone(worker) == -signal.SIGKILL
        driver.events.append(f"killed {worker.pid} in {run}")
        handed = [run]
        driver.start()
        # 2. Freeze one beyond the grace period; thawed, it stops itself (exit 75).
        worker, run = driver.victim()
        worker.send_signal(signal.SIGSTOP)
        time.sleep(GRACE_S + 1.5)
        worker.send_signal(signal.SIGCONT)
        assert driver.wait_gone(worker) == sweep_lease.WORKER_FENCED
        driver.events.append(f"froze {worker.pid} in {run}")
        handed.append(run)
        driver.start()
        # 3. One worker's heartbeats fail for the grace period: it stops itself after half
        # (or ends its run first).
        worker, run = driver.victim(last=ROWS - 1)
        flag = driver.faults / f"heartbeat-fails-{worker.pid}"
        flag.touch()
        code = driver.wait_gone(worker, timeout=GRACE_S * 4)
        flag.unlink()
        driver.events.append(f"heartbeats of {worker.pid} failed in {run}")
        assert code == sweep_lease.WORKER_FENCED or code == 0  # 0: its run ended before the lease lapsed
        # The survivors finish the sweep: each waits for the runs others hold, and takes
        # over those whose worker is gone.
        for worker in list(driver.workers):
            assert driver.wait_gone(worker, timeout=300) == 0, (driver.events, driver.ended)
    finally:
        for worker in driver.workers:
            worker.kill()
            worker.wait()
    print(f"chaos seed {seed}: {driver.events}; {time.time() - started:.1f} s")

    # Every run completed exactly once: one COMPLETE trial each, reported once.
    from optuna.trial import TrialState

    trials = sweep_storage.load_study(sweep_storage.open_storage(spec.storage_url), spec.grid_study).get_trials(deepcopy=False)
    complete = sorted(trial.user_attrs["run"] for trial in trials if trial.state == TrialState.COMPLETE)
    assert complete == RUNS, [(t.number, t.state.name, t.user_attrs.get("run")) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    finished = sweep_queue.finished_trials(spec, sweep_storage.open_storage(spec.storage_url))
    assert sorted(item.label for item in finished) == RUNS and not [item for item in finished if item.error]

    # No run folder was written by two processes at once: once another process writes a
    # run's rows, the one before never writes to it again.
    writers: dict[str, list[int]] = {}
    for line in driver.writers.read_text().splitlines():
        pid, run, step = line.split()
        writers.setdefault(run, []).append(int(pid))
    assert sorted(writers) == RUNS
    for run, pids in writers.items():
        handed_over = [pid for index, pid in enumerate(pids) if index == 0 or pids[index - 1] != pid]
        assert len(handed_over) == len(set(handed_over)), f"{run} was written by {pids}"

    # Each run's metrics equal the uninterrupted run's, apart from elapsed_s.
    for run in RUNS:
        summary = json.loads((spec.runs_dir / run / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert csv_bytes_without_time(spec.runs_dir / run) == csv_bytes_without_time(reference / run), run
    for run in handed:  # the chaos did hand these runs over mid-way: continued from a checkpoint
        assert json.loads((spec.runs_dir / run / "summary.json").read_text()).get("resumed", 0) >= 1, (run, writers[run])


def test_a_three_worker_sweep_on_the_journal_survives_kills_freezes_and_failing_heartbeats(tmp_path, reference):
    _chaos(_sweep(tmp_path, "chaos"), tmp_path, reference)


def test_a_three_worker_sweep_on_postgresql_survives_kills_freezes_and_failing_heartbeats(tmp_path, reference, postgres):
    name = f"chaos-{tmp_path.name}"[:60]
    _chaos(_sweep(tmp_path, name, postgres), tmp_path, reference)


def test_a_database_restart_in_the_middle_of_a_sweep_is_waited_out(tmp_path, reference):
    """The database stops while two workers train (a restart: every connection cut) and
    comes back 3 s later: the workers retry their writes, saying so, and the sweep
    completes, each run once and as an uninterrupted run. (Before, the first write after
    the stop ended the worker in `unexpected StorageInternalError`.)"""
    from tests.conftest import PostgresServer

    server = PostgresServer()
    try:
        spec = sweep_create.create_sweep(_config(tmp_path), None, {"train.b": [0.5]}, [1], [], 0, tmp_path / "sweeps", "restart", server.url, "restart")
        driver = Driver(spec, tmp_path, 0)
        driver.env["FLOOD_SWEEP_GRACE_S"] = "30"  # the lease outlives the restart
        try:
            workers = [driver.start() for _ in range(2)]
            driver.victim(last=ROWS - 1)  # a run is under way
            server.stop()
            time.sleep(3)
            server.start()
            codes = [driver.wait_gone(worker, timeout=300) for worker in workers]
        finally:
            for worker in driver.workers:
                worker.kill()
                worker.wait()
        logs = "".join(path.read_text() for path in sorted((Path(spec.folder) / "workers").glob("chaos-*.log")))
        assert codes == [0, 0], logs[-3000:]
        assert "the storage did not answer" in logs or "heartbeat of trial" in logs, logs[-3000:]  # the outage was seen
        assert "unexpected" not in logs
        finished = sweep_queue.finished_trials(spec, sweep_storage.open_storage(spec.storage_url))
        runs = ["baseline-s1", "flooding-b0.5-s1"]
        assert sorted(item.label for item in finished) == runs and not [item for item in finished if item.error]
        for run in runs:
            assert csv_bytes_without_time(spec.runs_dir / run) == csv_bytes_without_time(reference / run), run
    finally:
        server.close()
