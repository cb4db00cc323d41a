"""`flood sweep`'s own process (it need not be a worker, and never imports torch):
start the workers, follow the study, stop them on Ctrl-C, write the results."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flood_cli.compare.command import build_report, compare_command
from flood_cli.compare.plots import plot_sweep_curve
from flood_cli.core.errors import FloodError
from flood_cli.runs.tracking import check_trackers
from flood_cli.sweep.lease import WORKER_FENCED
from flood_cli.sweep.queue import Finished, finished_trials
from flood_cli.sweep.spec import CURVE_KEYS, RESULTS_FILE, WORKERS_DIR, SweepSpec, _first_line
from flood_cli.sweep.steps import STEPS_DIR, StepCount
from flood_cli.sweep.storage import _storage_error, masked, open_storage, worker_env
from flood_cli.sweep.worker import WORKER_INTERRUPTED


def _pdeathsig(parent: int) -> None:
    """A worker gets SIGTERM when the sweep process dies (Linux): it then stops its run
    after a checkpoint and queues it again, instead of training unwatched. (Run in the
    child before it starts; a sweep that died before this gets SIGTERM at once.)"""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def start_workers(spec: SweepSpec, count: int, verbose: bool) -> list[subprocess.Popen]:
    """``count`` worker processes on this machine: one GPU each where there are GPUs,
    else an equal share of the CPU cores each. Each runs in a session of its own, so a
    terminal's Ctrl-C reaches the sweep only, which stops each worker with one SIGTERM."""
    gpus = _visible_gpus()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // count)  # of the cores this process may use
    (Path(spec.folder) / WORKERS_DIR).mkdir(exist_ok=True)  # deleted by hand: it holds only logs
    workers = []
    for index in range(count):
        env = {**os.environ, **worker_env(spec.storage)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        else:  # torch takes its thread count from here
            env.setdefault("OMP_NUM_THREADS", str(threads))
        log = open(Path(spec.folder) / WORKERS_DIR / f"worker-{index + 1}.log", "a", encoding="utf-8")  # noqa: SIM115 (the worker's stdout; closed once Popen has it)
        command = [sys.executable, "-m", "flood_cli", "sweep", "--worker", "--resume", spec.folder]
        if verbose:
            command.append("--verbose")
        workers.append(
            subprocess.Popen(
                command,
                env=env,
                stdout=None if verbose else log,
                stderr=None if verbose else subprocess.STDOUT,
                start_new_session=True,  # not the terminal's process group: no Ctrl-C of its own
                preexec_fn=functools.partial(_pdeathsig, os.getpid()),
            )
        )
        log.close()
    return workers


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item for item in listed.split(",") if item.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def follow(
    spec: SweepSpec,
    workers: list[subprocess.Popen],
    echo: Callable[[str], None],
    progress: Any,
    poll_s: float = 1.0,
) -> list[Finished]:
    """Report each trial as it ends, until every worker has stopped. The bar counts
    the runs' steps (see sweep/steps.py), so that it and its ETA move from the first step."""
    storage = open_storage(spec.storage_url)
    before = finished_trials(spec, storage)  # ended before this start (a resumed sweep)
    seen = {item.key for item in before}
    done = sum(item.runs for item in before)
    started = time.time()
    total = spec.expected_runs
    steps = StepCount(Path(spec.folder) / WORKERS_DIR / STEPS_DIR)
    steps_total, steps_done, _ = steps.progress(total, done)
    progress.start(steps_total, steps_done)
    failing = False
    while True:
        alive = any(worker.poll() is None for worker in workers)
        try:
            ended = finished_trials(spec, storage)
        except Exception as exc:
            if not _storage_error(exc) or not alive:
                raise
            if not failing:  # the workers wait it out (and stop themselves if it lasts)
                echo(f"the storage does not answer ({type(exc).__name__}: {masked(_first_line(exc))}); waiting")
            failing = True
            time.sleep(poll_s)
            continue
        if failing:
            echo("the storage answers again")
            failing = False
        for item in ended:
            if item.key in seen:
                continue
            seen.add(item.key)
            done += item.runs
            echo(_line(item, done, total))
        steps_total, steps_done, steps_here = steps.progress(total, done)
        remaining = None if steps_total is None else steps_total - steps_done
        progress.update(steps_done, _eta(started, steps_here, remaining), steps_total, f"{done}/{total} runs")
        if not alive:
            return ended
        time.sleep(poll_s)


def _line(item: Finished, done: int, total: int) -> str:
    where = f"[{done}/{total}]"
    if item.error:
        return f"{where} {item.label}: failed ({item.error})"
    accuracy = f", best val_accuracy {item.accuracy:.4f}" if item.accuracy is not None and not math.isnan(item.accuracy) else ""
    return f"{where} {item.label}: best val_loss {item.value:.4f}{accuracy} ({item.seconds:.0f} s)"


def _eta(started: float, steps_here: int, remaining: int | None) -> float | None:
    """Seconds left, from the pace of the steps taken since this start."""
    if remaining is None:
        return None
    if remaining <= 0:
        return 0.0
    if steps_here <= 0:
        return None
    return (time.time() - started) / steps_here * remaining


def stop_workers(workers: list[subprocess.Popen], timeout: float = 600) -> bool:
    """Ask every worker, with one SIGTERM, to stop after its current step (checkpoint,
    its trial queued again). A KeyboardInterrupt while they do (a second Ctrl-C), or
    ``timeout`` seconds, kills them at once: their trials, still marked running by
    processes that are gone, are queued again by --resume, and each run continues from
    its last checkpoint. Returns whether any worker was killed."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    try:
        for worker in workers:
            worker.wait(timeout=max(1.0, deadline - time.time()))
        return False
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            for worker in workers:
                worker.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return True


def disk_use(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def write_results(spec: SweepSpec) -> list[Path]:
    """The grouped table (results.md) and a curve per swept flood level or ascent rate."""

    folder = Path(spec.folder)
    runs = spec.runs_dir
    written: list[Path] = []
    if not runs.is_dir() or not any(runs.iterdir()):  # (deleted by hand: --resume makes it again)
        return written
    output = compare_command([runs], markdown=True)
    (folder / RESULTS_FILE).write_text(f"# Sweep {spec.name}\n\n{spec.describe()}\n\n{output.text}\n", encoding="utf-8")
    written.append(folder / RESULTS_FILE)
    report = build_report([runs])
    swept = {key for overrides in spec.settings for key in overrides} | {r["key"] for r in spec.search}
    for key in CURVE_KEYS:
        if key in swept:
            path = folder / f"{key.split('.')[-1]}-curve.png"
            if plot_sweep_curve(report, key, path) is not None:
                written.append(path)
    return written


@dataclass
class SweepOutcome:
    spec: SweepSpec
    finished: list[Finished]
    results: list[Path]
    disk_bytes: int
    interrupted: bool = False
    killed: bool = False  # a second Ctrl-C stopped the workers at once
    worker_errors: list[str] = field(default_factory=list)  # workers that ended with an error

    @property
    def failed(self) -> list[Finished]:
        return [item for item in self.finished if item.error]


def run_sweep(spec: SweepSpec, workers: int, verbose: bool, echo: Callable[[str], None], progress: Any) -> SweepOutcome:
    """:func:`run_phase`; for an --b auto sweep whose flood levels are not placed yet,
    first the baseline (run, or found complete), then the levels placed from it (one
    line), then the flooding runs."""
    from flood_cli.sweep.auto_b import baselines_done, levels_pending, place_levels

    if levels_pending(spec):
        if not baselines_done(spec, open_storage(spec.storage_url)):
            outcome = run_phase(spec, workers, verbose, echo, progress)
            if outcome.interrupted or outcome.worker_errors:
                return outcome
        place_levels(spec, echo)  # one line naming a baseline seed that failed
        if getattr(progress, "bar", None) is not None and getattr(progress, "task", None) is not None:
            progress.bar.remove_task(progress.task)  # the second phase starts its own bar
    return run_phase(spec, workers, verbose, echo, progress)


def run_phase(spec: SweepSpec, workers: int, verbose: bool, echo: Callable[[str], None], progress: Any) -> SweepOutcome:
    """Start the workers, report trials as they end, write the results. Ctrl-C or
    SIGTERM stop every worker after its current step (each run keeps a checkpoint and
    is queued again for --resume); a second one stops them at once. A sweep whose
    runs all completed (a resume of a finished sweep) starts no worker and says so."""
    ended = finished_trials(spec, open_storage(spec.storage_url))
    done = sum(item.runs for item in ended)
    if done >= spec.expected_runs and not any(item.error for item in ended):
        echo(f"nothing left to run: {done} of {spec.expected_runs} runs complete")
        return SweepOutcome(spec, ended, _results(spec), disk_use(Path(spec.folder)))
    trackers = list((spec.base.get("output") or {}).get("report_to") or [])
    if trackers:  # one line now, rather than every run of the sweep failing on it
        spec.runs_dir.mkdir(parents=True, exist_ok=True)
        check_trackers(trackers, spec.runs_dir)
    processes = start_workers(spec, workers, verbose)
    interrupted = killed = False
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, interrupt)
    try:
        try:
            with progress:
                finished = follow(spec, processes, echo, progress)
        except KeyboardInterrupt:
            interrupted = True
            print("stopping the workers after their current step (Ctrl-C again stops them at once)", file=sys.stderr, flush=True)
            killed = stop_workers(processes)
            finished = finished_trials(spec, open_storage(spec.storage_url))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    worker_errors = []
    left = spec.expected_runs - sum(item.runs for item in finished)
    for index, process in enumerate(processes, start=1):
        code = process.returncode
        if code in (WORKER_INTERRUPTED, WORKER_FENCED) or (code is not None and code < 0):
            # Stopped from outside, or it lost its lease: its run was queued again, and
            # another worker may have finished it; the sweep is interrupted if runs are left.
            interrupted = interrupted or left > 0
        elif code:
            worker_errors.append(f"worker {index} ended with exit code {code} (see {Path(spec.folder) / WORKERS_DIR / f'worker-{index}.log'})")
    return SweepOutcome(spec, finished, _results(spec), disk_use(Path(spec.folder)), interrupted, killed, worker_errors)


def _results(spec: SweepSpec) -> list[Path]:
    try:
        return write_results(spec)
    except FloodError:
        return []  # no run has an evaluation yet (stopped early): nothing to compare
