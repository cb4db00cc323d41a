"""The worker: claim a trial, run it (train, resume or read back its run), tell the
result; stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flood_cli.core.errors import FloodError, RunInterrupted, RunPruned, UnresumableRun
from flood_cli.core.progress import make_reporter
from flood_cli.runs.folder import RunDir, read_metrics
from flood_cli.runs.tracking import SWEEP_ENV
from flood_cli.sweep.lease import HEARTBEAT_S, Heartbeat, _LeaseReporter
from flood_cli.sweep.queue import Claimed, Queue, _defined, _requeue, _tell, queue_lock, reconcile
from flood_cli.sweep.spec import WORKERS_DIR, Setting, SweepSpec, config_for
from flood_cli.sweep.steps import STEPS_DIR, StepNotes
from flood_cli.sweep.storage import _retrying, load_study, masked, open_storage

LOCK_POLL_S = 5.0  # how often a worker looks whether a locked run folder was let go


class WorkerInterrupted(Exception):
    """A worker stopped by SIGINT/SIGTERM: its trial is queued again (exit 130)."""


class _StopSignals:
    """A worker's SIGINT/SIGTERM outside the training loop (which takes them itself and
    stops after its step). Inside a trial (a run starting, or between a search's seeds)
    it stops at once: the run continues from its checkpoint. Between trials (claiming,
    recording a result) it is noted, and the worker stops before the next claim, so no
    write to the storage is cut in half. A second signal stops at once anywhere."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.in_trial = False
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        first = self.signal is None
        self.signal = self.signal or signum
        if self.in_trial or not first:
            raise KeyboardInterrupt

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def work(spec: SweepSpec, log: Callable[[str], None] = lambda text: None, verbose: bool = False) -> int:
    """Run trials until none is left; return how many this worker finished. SIGINT or
    SIGTERM stops the run after its current step with a checkpoint, queues its trial
    again and raises WorkerInterrupted."""
    saved = os.environ.get(SWEEP_ENV)
    os.environ[SWEEP_ENV] = spec.name  # the sweep's runs are a group in W&B
    try:
        with _StopSignals() as stop:
            return _work(spec, log, verbose, stop)
    finally:
        if saved is None:
            os.environ.pop(SWEEP_ENV, None)
        else:
            os.environ[SWEEP_ENV] = saved


def _work(spec: SweepSpec, log: Callable[[str], None], verbose: bool, stop: _StopSignals) -> int:
    storage = open_storage(spec.storage_url)
    lock = queue_lock(spec)
    grid = Queue(storage, load_study(storage, spec.grid_study), lock)
    search = Queue(storage, load_study(storage, spec.study, spec.prune), lock) if spec.search else None
    reconcile(spec, storage, log)  # runs a crash left without a claim are queued again

    reporter_factory = lambda: make_reporter(quiet=not verbose)  # noqa: E731
    done = 0
    while True:
        if stop.signal is not None:
            raise WorkerInterrupted(f"stopped by {signal.Signals(stop.signal).name} between runs; nothing to queue again")
        for queue in filter(None, (grid, search)):
            _retrying(spec, "take over stale trials", queue.reclaim_stale)
        claimed = _retrying(spec, "claim a run", grid.claim)
        queue = grid
        if claimed is None and search is not None:
            claimed, queue = _retrying(spec, "claim a trial", lambda: _ask(search, spec)), search
        if claimed is None:
            if not _retrying(spec, "look for running trials", lambda: _others_running(grid, search)):
                return done
            # Every run left is held by another worker: wait, and take over any whose
            # worker dies or freezes (no run is left to a dead worker until --resume).
            _pause(stop, _poll_s())
            continue
        what = str(claimed.attrs.get("run") or claimed.attrs.get("setting") or f"trial {claimed.number}")
        lease = Heartbeat(queue, claimed.trial_id, what=what)
        _retrying(spec, "record its claim", lease.mark)
        with lease:
            try:
                stop.in_trial = True
                if stop.signal is not None:  # it came while this trial was claimed
                    raise KeyboardInterrupt
                value, attrs = _run_trial(spec, claimed, reporter_factory, log, lease)
            except (_Interrupted, KeyboardInterrupt) as exc:
                # Stopped by a signal (after a checkpoint, or at once): the same run, queued again.
                stop.in_trial = False
                _requeue(queue, claimed)
                what = claimed.attrs.get("run") or claimed.attrs.get("setting") or f"trial {claimed.number}"
                why = str(exc) if isinstance(exc, _Interrupted) else "stopped at once (it continues from its last checkpoint)"
                raise WorkerInterrupted(f"{what}: {why}; queued again for --resume") from None
            except RunPruned:
                stop.in_trial = False
                _tell(queue, claimed, state=_state("PRUNED"))
                log(f"pruned {claimed.attrs.get('setting', claimed.number)}")
                done += 1
                continue
            except Exception as exc:
                stop.in_trial = False
                _tell(queue, claimed, state=_state("FAIL"), attrs={"error": masked(f"{type(exc).__name__}: {exc}")[:500]})
                log(f"failed {claimed.attrs.get('run', claimed.number)}: {exc}")
                done += 1
                continue
            finally:
                stop.in_trial = False
        if not _retrying(spec, "record a result", lambda: _tell(queue, claimed, value, attrs=attrs)):  # noqa: B023 (called at once)
            log(f"trial {claimed.number} was taken as stale and queued again meanwhile; its retry reports its run(s)")
        done += 1


def _poll_s() -> float:
    """How often a worker with nothing to claim looks at the trials others hold."""
    return max(0.2, min(LOCK_POLL_S, HEARTBEAT_S))


def _pause(stop: _StopSignals, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while stop.signal is None and time.monotonic() < deadline:
        time.sleep(min(0.2, seconds))


def _others_running(grid: Queue, search: Queue | None) -> bool:
    from optuna.trial import TrialState

    return any(queue.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) for queue in filter(None, (grid, search)))


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


class _Interrupted(Exception):
    pass


def _ask(queue: Queue, spec: SweepSpec) -> Claimed | None:
    """A TPE trial, while the budget lasts (retries of interrupted ones first)."""
    waiting = queue.claim()
    if waiting is not None:
        waiting.study = queue.study
        return waiting
    if _trials_used(queue.study) >= spec.trials:
        return None
    trial = queue.study.ask()
    params = {}
    for entry in spec.search:
        if entry.get("integer"):
            params[entry["key"]] = trial.suggest_int(entry["key"], int(entry["low"]), int(entry["high"]), log=entry["log"])
        else:
            params[entry["key"]] = trial.suggest_float(entry["key"], entry["low"], entry["high"], log=entry["log"])
    overrides = {"train.mode": spec.mode, **params}
    setting = Setting(overrides)
    attrs = {"setting": setting.label(), "overrides": overrides, "search": True}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return Claimed(queue.trial_id(trial.number), trial.number, attrs, params, queue.study)


def _trials_used(study: Any) -> int:
    """The trials of a search's budget: every trial, failed ones included (a setting
    that fails must not let TPE propose others without end), except one queued again
    (interrupted, or its worker died), whose retry counts instead."""
    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs.get("retry_of") for trial in trials}
    return sum(1 for trial in trials if trial.number not in retried and (_defined(trial) or not trial.state.is_finished()))


def _run_trial(
    spec: SweepSpec, claimed: Claimed, reporter_factory: Callable[[], Any], log: Callable[[str], None], lease: Heartbeat | None = None
) -> tuple[float, dict[str, Any]]:
    """Run the trial's run(s): one for a grid trial, every seed for a search trial."""
    # A search trial's values as asked (kept in its attributes: the retry of an
    # interrupted one is a queued trial, whose params Optuna shows only once suggested).
    overrides = claimed.attrs["overrides"]
    seeds = spec.seeds if claimed.attrs.get("search") else [claimed.attrs["seed"]]
    setting = Setting(overrides)
    losses, accuracies, names = [], [], []
    for index, seed in enumerate(seeds):
        # A grid trial is queued with its run's name (create, reconcile); a search trial's are made here.
        name: str = claimed.attrs["run"] if not claimed.attrs.get("search") else setting.run_name(seed)
        with reporter_factory() as shown:
            notes = StepNotes(_LeaseReporter(shown, lease, name), Path(spec.folder) / WORKERS_DIR / STEPS_DIR, name)
            reporter: StepNotes | _PruningReporter = notes
            if spec.prune and claimed.study is not None and index == 0:
                reporter = _PruningReporter(reporter, claimed)  # judged on its first seed's curve
            try:
                summary = _run_one(spec, overrides, seed, name, reporter)
            except (_Interrupted, KeyboardInterrupt):
                raise  # queued again: its steps so far stay noted
            except Exception:
                notes.ended()  # failed or pruned: the sweep's bar counts it as done
                raise
            notes.ended()
        losses.append(float(summary["best_val_loss"]))
        accuracies.append(float(summary.get("best_val_accuracy") or math.nan))
        names.append(name)
        log(f"finished {name}: best val_loss {summary['best_val_loss']:.4f}")
    attrs = {"runs": names, "best_val_accuracy": sum(accuracies) / len(accuracies)}
    return sum(losses) / len(losses), attrs


class _PruningReporter:
    """Passes evaluations to the trial's pruner; stops the run when it says so."""

    def __init__(self, inner: Any, claimed: Claimed):
        import optuna

        self.inner = inner
        self.trial = optuna.trial.Trial(claimed.study, claimed.trial_id)
        self.live_loss_every = inner.live_loss_every

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def evaluation(self, row: dict[str, Any]) -> None:
        self.inner.evaluation(row)
        self.trial.report(float(row["val_loss"]), int(row["step"]))
        if self.trial.should_prune():
            raise RunPruned(f"pruned at step {row['step']}: val_loss {row['val_loss']:.4f} is worse than the median of earlier trials there")


def _run_one(spec: SweepSpec, overrides: dict[str, Any], seed: int, name: str, reporter: Any) -> dict[str, Any]:
    """Train one run of the sweep, or continue it, or read it when it is complete."""
    from flood_cli.train.checkpoint import last_checkpoint
    from flood_cli.train.entry import resume_training, run_training

    run_dir = spec.runs_dir / name
    try:
        held = _hold_folder(run_dir)  # waits while another process trains it
        if held is not None:
            try:
                summary = RunDir(run_dir).load_summary()
                if summary.get("status") == "completed":
                    return summary  # never run again
                resume = last_checkpoint(run_dir).exists()
                if not resume:
                    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
                    if rows:
                        raise FloodError(
                            f"run {run_dir} has rows but no checkpoint (nor a completed summary); it cannot be "
                            f"continued: move the folder aside and resume the sweep to train it again"
                        )
                    shutil.rmtree(run_dir)  # it stopped before its first evaluation: nothing is lost
            finally:
                os.close(held)
            if resume:
                try:
                    resume_training(run_dir, reporter)
                except UnresumableRun as exc:  # flood train's advice (a new --name) cannot help a sweep
                    raise FloodError(
                        f"{exc.problem}; the sweep cannot continue this run: move {run_dir} aside (or delete it) and "
                        f"run flood sweep --resume {spec.folder} again, which trains it anew"
                    ) from None
            else:
                run_training(config_for(spec, overrides, seed, name), reporter)
        else:
            run_training(config_for(spec, overrides, seed, name), reporter)
    except RunInterrupted as exc:
        raise _Interrupted(f"{exc}; checkpoint written") from None  # stopped after a step, as asked
    except KeyboardInterrupt:
        raise _Interrupted("stopped at once (it continues from its last checkpoint)") from None
    return RunDir(run_dir).load_summary()


def _hold_folder(run_dir: Path) -> int | None:
    """The run folder's lock (RunDir.lock's flock), taken without blocking; None when
    there is no folder. While another process holds it (a live worker whose trial was
    taken as stale, or a `flood train --resume` by hand), the folder is that process's:
    it is neither deleted nor resumed, and this worker waits, saying so once, until it
    is let go (the run then reads back complete, or is continued from its checkpoint)."""
    said = False
    while True:
        try:
            fd = os.open(run_dir, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
        if not said:
            print(f"run {run_dir.name} is being trained by another process (its folder is locked); waiting for it", flush=True)
            said = True
        time.sleep(LOCK_POLL_S)


WORKER_INTERRUPTED = 130  # a worker's exit code when a signal stopped it (as flood train's)
