"""A study's trials as a work queue: claims, the queue lock, and :func:`reconcile`, which
keeps the runs of sweep.yaml the truth (a run's outcome is its latest trial's)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flood_cli.core.errors import FloodError
from flood_cli.runs.folder import read_run_file
from flood_cli.sweep import lease
from flood_cli.sweep.spec import QUEUE_LOCK, SPEC_FILE, Setting, SweepSpec
from flood_cli.sweep.storage import _wrote, load_study, open_storage


@dataclass
class Claimed:
    trial_id: int
    number: int
    attrs: dict[str, Any]
    params: dict[str, Any]
    study: Any = None  # a search trial's study, for its pruner


_held_locks: dict[str, list[int]] = {}  # path -> [fd, depth]: the queue lock is reentrant


@contextlib.contextmanager
def _locked(path: Path | None) -> Any:
    """Hold the sweep's queue lock (flock; the kernel drops it when a process dies).
    Every change of the queue that takes more than one write happens under it, so no
    other process sees it half done unless its writer died (and then reconcile mends it)."""
    if path is None or not path.parent.is_dir():
        yield
        return
    key = str(path)
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held_locks[key] = [fd, 1]
        try:
            yield
        finally:
            del _held_locks[key]
    finally:
        os.close(fd)


class Queue:
    """One study's trials as a work queue (grid trials are enqueued WAITING)."""

    def __init__(self, storage: Any, study: Any, lock: Path | None = None):
        self.storage = storage
        self.study = study
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.lock = lock

    def locked(self) -> Any:
        return _locked(self.lock)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def claim(self) -> Claimed | None:
        """Take one WAITING trial: the storage lets only one claimant move it to RUNNING."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.trial_id(trial.number)
            try:
                won = self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
                _wrote()
                if won:
                    return Claimed(trial_id, trial.number, dict(trial.user_attrs), dict(trial.params))
            except UpdateFinishedTrialError:
                continue
        return None

    def reclaim_stale(self, grace: float | None = None) -> list[int]:
        """Fail RUNNING trials whose worker is gone and enqueue them again (same run).
        Two writes, under the queue lock; a crash between them leaves a stopped trial
        that :func:`reconcile` queues again."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        grace = lease.GRACE_S if grace is None else grace
        retried = []
        with self.locked():
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not lease._is_stale(trial, grace, self.study.study_name):
                    continue
                try:
                    if not self.storage.set_trial_state_values(self.trial_id(trial.number), state=TrialState.FAIL):
                        continue
                except UpdateFinishedTrialError:
                    continue  # another process reclaimed it first
                _wrote()
                if _defined(trial):
                    attrs = {k: v for k, v in trial.user_attrs.items() if k in TRIAL_SPEC_KEYS}
                    self.study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "retry_of": trial.number})
                    _wrote()
                retried.append(trial.number)
        return retried


def _defined(trial: Any) -> bool:
    """Whether a trial says what it runs: a grid run, or a search trial's values (one
    asked by TPE whose worker died before it recorded them does not, and is not retried)."""
    return "run" in trial.user_attrs or "overrides" in trial.user_attrs


TRIAL_SPEC_KEYS = ("run", "setting", "overrides", "seed", "search")


def _requeue(queue: Queue, claimed: Claimed) -> None:
    """The claimed trial stopped (a signal): failed, and its run queued again. Two writes,
    under the queue lock; a crash between them leaves a stopped trial that
    :func:`reconcile` queues again."""
    from optuna.trial import TrialState

    with queue.locked():
        if not _tell(queue, claimed, state=TrialState.FAIL):
            return  # reclaimed meanwhile: its retry is queued already
        attrs = {k: v for k, v in claimed.attrs.items() if k in TRIAL_SPEC_KEYS}
        queue.study.enqueue_trial(claimed.params, user_attrs={**attrs, "retry_of": claimed.number})
        _wrote()


def _tell(queue: Queue, claimed: Claimed, value: float | None = None, state: Any = None, attrs: dict | None = None) -> bool:
    """Record the claimed trial's end (attributes first, then its state); False when it
    ended already: another worker took it as stale and queued its run again, and that
    retry reports the run (reading it back when it is complete)."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        if queue.storage.get_trial(claimed.trial_id).state.is_finished():
            return False
        for key, item in (attrs or {}).items():
            queue.storage.set_trial_user_attr(claimed.trial_id, key, item)
            _wrote()
        if state is None:
            queue.study.tell(claimed.number, value)
        else:
            queue.study.tell(claimed.number, state=state)
    except (UpdateFinishedTrialError, ValueError):
        if not queue.storage.get_trial(claimed.trial_id).state.is_finished():
            raise
        return False
    _wrote()
    return True


def queue_lock(spec: SweepSpec) -> Path | None:
    """The queue lock of the sweep folder (None for a worker that has no sweep folder
    here: one joined over a database from another machine)."""
    folder = Path(spec.folder)
    return folder / QUEUE_LOCK if (folder / SPEC_FILE).is_file() else None


def _run_key(trial: Any, numbered: dict[int, Any]) -> tuple:
    """What a trial is a claim on: a grid trial its run, a search trial the first trial
    of its chain of retries."""
    if "run" in trial.user_attrs:
        return ("run", trial.user_attrs["run"])
    seen = {trial.number}
    while trial.user_attrs.get("retry_of") in numbered and trial.user_attrs["retry_of"] not in seen:
        trial = numbered[trial.user_attrs["retry_of"]]
        seen.add(trial.number)
    return ("trial", trial.number)


def _claims(study: Any) -> dict[tuple, list[Any]]:
    """Each run's trials (a search trial's chain), oldest first."""
    trials = study.get_trials(deepcopy=False)
    numbered = {trial.number: trial for trial in trials}
    grouped: dict[tuple, list[Any]] = {}
    for trial in trials:
        grouped.setdefault(_run_key(trial, numbered), []).append(trial)
    return grouped


def _summary_completed(path: Path) -> bool:
    try:
        return json.loads(read_run_file(path / "summary.json")).get("status") == "completed"
    except (OSError, ValueError, AttributeError, FloodError):  # not a summary flood can read: not completed
        return False


def _lost(trials: list[Any], runs_dir: Path | None) -> str | None:
    """Why a run has neither a result nor a live owner (None when it has one of them):
    its latest trial decides its outcome; a WAITING or RUNNING one owns it (a stale
    RUNNING one was reclaimed before this is asked)."""
    from optuna.trial import TrialState

    if not trials:
        return "it has no trial"
    if any(trial.state in (TrialState.WAITING, TrialState.RUNNING) for trial in trials):
        return None
    latest = trials[-1]
    if latest.state == TrialState.COMPLETE:
        if runs_dir is None:
            return None
        names = latest.user_attrs.get("runs") or [latest.user_attrs.get("run")]
        gone = [name for name in names if name and not _summary_completed(runs_dir / name)]
        return f"it completed, but {', '.join(f'runs/{name}' for name in gone)} (or its summary.json) is gone" if gone else None
    if latest.state == TrialState.PRUNED or "error" in latest.user_attrs:
        return None  # an outcome (a failure is tried again by --resume)
    return f"its trial #{latest.number} stopped (interrupted, or its worker died) and was not queued again"


def reconcile(spec: SweepSpec, storage: Any = None, log: Callable[[str], None] = lambda text: None) -> list[str]:
    """Queue again every run of sweep.yaml that has no completed result and no live
    owner. Run by --resume and by every worker when it starts, under the queue lock, so
    no crash between two writes of the queue can lose a run. Run folders are looked at
    only where the sweep folder is here (a completed run whose folder or summary is gone
    is queued again). Returns the runs queued again."""
    storage = storage or open_storage(spec.storage_url)
    lock = queue_lock(spec)
    runs_dir = spec.runs_dir if lock is not None else None
    queued: list[str] = []
    with _locked(lock):
        for study_name, _ in _studies(spec):
            queue = Queue(storage, load_study(storage, study_name), lock)
            queue.reclaim_stale()
            claims = _claims(queue.study)
            # Each run's trial attributes (a grid run's, from sweep.yaml); None for a search
            # run, which is in claims, so has a trial whose attributes are taken below.
            wanted: dict[tuple, dict[str, Any] | None] = {}
            if study_name == spec.grid_study:
                for overrides in spec.settings:
                    setting = Setting(overrides)
                    for seed in spec.seeds:
                        wanted[("run", setting.run_name(seed))] = {
                            "run": setting.run_name(seed), "setting": setting.label(), "overrides": setting.overrides, "seed": seed,
                        }
            else:
                wanted = {key: None for key, trials in claims.items() if _defined(trials[0])}
            for key, attrs in wanted.items():
                trials = claims.get(key, [])
                why = _lost(trials, runs_dir)
                if why is None:
                    continue
                if trials:
                    latest = trials[-1]
                    attrs = {**{k: v for k, v in latest.user_attrs.items() if k in TRIAL_SPEC_KEYS}, "retry_of": latest.number}
                    params = dict(latest.params)
                else:
                    params = {}
                    assert attrs is not None, f"{key}: a run without a trial is a grid run, whose attributes are known"
                queue.study.enqueue_trial(params, user_attrs=attrs)
                _wrote()
                name = attrs.get("run") or attrs.get("setting") or f"trial {key[1]}"
                log(f"{name}: {why}; queued again")
                queued.append(name)
    return queued


@dataclass
class Finished:
    """A trial that ended, as the sweep reports it."""

    key: str  # study and trial number
    label: str
    runs: int
    value: float | None
    accuracy: float | None
    error: str | None
    seconds: float


def _studies(spec: SweepSpec) -> list[tuple[str, int]]:
    """The sweep's studies, each with the number of runs one of its trials makes."""
    if spec.search:
        return [(spec.grid_study, 1), (spec.study, len(spec.seeds))]
    return [(spec.study, 1)]


def finished_trials(spec: SweepSpec, storage: Any) -> list[Finished]:
    """The runs (a search: trials) that ended, each as its latest trial ended: completed,
    pruned, or failed with an error. A run queued again (interrupted, its worker died, or
    a failure retried by --resume) is not one until its retry ends."""
    from optuna.trial import TrialState

    found = []
    for study_name, runs_each in _studies(spec):
        for trials in _claims(load_study(storage, study_name)).values():
            trial = trials[-1]
            attrs = trial.user_attrs
            if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                continue  # queued or running
            if trial.state == TrialState.FAIL and "error" not in attrs:
                continue  # interrupted, or its worker died: queued again
            start, end = trial.datetime_start, trial.datetime_complete
            seconds = (end - start).total_seconds() if start and end else 0.0
            label = str(attrs.get("run") or attrs.get("setting") or f"trial {trial.number}")
            found.append(Finished(f"{study_name}#{trial.number}", label, runs_each, trial.value, attrs.get("best_val_accuracy"), attrs.get("error"), seconds))
    return found


def requeue_failed(spec: SweepSpec, log: Callable[[str], None] | None = None) -> int:
    """On --resume: :func:`reconcile` (runs left without a result or a live owner are
    queued again, each said in one line), then the runs whose latest trial failed with
    an error are tried again (same run folder: continued from its checkpoint where it
    has one). Completed runs never run again. Returns how many failed runs are retried."""
    from optuna.trial import TrialState

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    storage = open_storage(spec.storage_url)
    lock = queue_lock(spec)
    count = 0
    with _locked(lock):
        if lock is not None:  # deleted by hand: reconcile queues again each run it held, in one line each
            spec.runs_dir.mkdir(exist_ok=True)
        reconcile(spec, storage, log)
        for study_name, _ in _studies(spec):
            queue = Queue(storage, load_study(storage, study_name), lock)
            for trials in _claims(queue.study).values():
                trial = trials[-1]
                if trial.state == TrialState.FAIL and "error" in trial.user_attrs and _defined(trial):
                    attrs = {k: v for k, v in trial.user_attrs.items() if k in TRIAL_SPEC_KEYS}
                    queue.study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "retry_of": trial.number})
                    _wrote()
                    count += 1
    return count
