"""Experiment tracking where users already look: TensorBoard, MLflow and Weights & Biases
(`output.report_to`).

Each evaluation row goes to the trackers as scalars at its optimizer step, the resolved
config as parameters (MLflow) or text (TensorBoard), and the summary at the end. The
raw training loss and the objective the optimizer followed are separate scalars
(`train/loss` and `train/objective`): a tracker that shows only the flooded objective
makes flooding look like it fits worse than it does.

* TensorBoard: event files in ``<run>/tensorboard/`` (``tensorboard --logdir runs``).
* MLflow: ``MLFLOW_TRACKING_URI`` when set, else a local store beside the runs,
  ``sqlite:///<output.dir>/mlflow.db`` (MLflow 3 no longer takes a plain file store by
  default); one MLflow run per flood run, in experiment ``flood``, continued on resume.
  A SQLite store's first use (MLflow creates its tables then, by a chain of migrations
  that several processes must not run at once: workers of a sweep, runs started by hand
  side by side) is taken under a lock file beside it, ``mlflow.db.lock``.
* Weights & Biases: one W&B run per flood run, in project ``WANDB_PROJECT`` (else
  ``flood``), its files in ``<run>/wandb/`` (nothing written elsewhere); the config as the
  W&B config, the run's summary fields as its summary, a sweep's runs grouped under the
  sweep's name. Its id is kept in summary.json (``wandb_run_id``): a resume continues that
  W&B run. ``WANDB_MODE=offline`` logs without an account or network (``wandb sync``
  uploads later); online, an API key must be there (``wandb login`` or ``WANDB_API_KEY``).

Before the data and the model are loaded, `check_trackers` makes sure each tracker can be
written, within seconds: a folder that cannot be written, an ``mlflow.db`` that is a
folder or not a SQLite file, an MLflow server that does not answer (asked once, without
MLflow's retries) are one line each. Once training runs, a run never depends on its
trackers: a tracker that fails is warned about once and dropped, training goes on, and
the rows it lacks are listed at the end (a line, and ``tracker_gaps`` in summary.json).
A resume whose MLflow run is gone (the store deleted or replaced) logs to a new MLflow
run tagged with the one it continues, the earlier rows copied from metrics.csv.

All are optional extras (``pip install 'flood-cli[tensorboard]'`` / ``[mlflow]`` / ``[wandb]``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flood_cli.core.errors import FloodError, shown
from flood_cli.runs.columns import SCALARS

TENSORBOARD_DIR = "tensorboard"
MLFLOW_EXPERIMENT = "flood"
WANDB_DIR = "wandb"
WANDB_PROJECT = "flood"  # when WANDB_PROJECT is not set
# A sweep's worker names its sweep here: its runs' W&B group.
SWEEP_ENV = "FLOOD_SWEEP"
INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_available(names: list[str]) -> None:
    """Before any work: a tracker whose package is missing is one line with the fix."""
    for name in names:
        module = INSTALL[name]
        try:
            __import__(module)
        except ImportError:
            raise FloodError(
                f"output.report_to lists {name}, but the {module} package is not installed; "
                f"pip install 'flood-cli[{INSTALL[name]}]', or drop {name} from --report-to"
            ) from None


# MLflow's REST client retries a failed request 7 times with a growing backoff (about 4
# minutes for a server that is down; mlflow/environment_variables.py). The check before
# a run asks once, and a run's own calls retry a little: a server that went away costs a
# run seconds, not minutes. A value the user set in the environment wins (the check's
# retries excepted: it is one question, asked again by the run itself).
HTTP_RETRIES, HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
CHECK_TIMEOUT_S = 5
RUN_RETRIES, RUN_TIMEOUT_S = 2, 10


def check_trackers(names: list[str], out_dir: Path, run_dir: Path | None = None) -> None:
    """Before the data and the model are loaded: each tracker can be written (one line
    naming what is wrong and the fix if not), within seconds. ``run_dir``: a resumed run's
    folder (a new run's is made by flood, in ``out_dir``)."""
    check_available(names)
    if "tensorboard" in names and run_dir is not None:
        _check_tensorboard(run_dir)
    if "mlflow" in names:
        _check_mlflow(out_dir)
    if "wandb" in names:
        _check_wandb(run_dir)


def _check_tensorboard(run_dir: Path) -> None:
    folder = run_dir / TENSORBOARD_DIR
    if folder.exists() and not folder.is_dir():
        raise FloodError(
            f"{folder} is not a folder (TensorBoard writes its event files there); move it away, "
            "or drop tensorboard from --report-to"
        )
    if folder.is_dir():
        _check_writable_folder(folder, f"TensorBoard's folder {folder}", "tensorboard")
    else:
        _check_writable_folder(run_dir, f"the run folder {run_dir} (TensorBoard makes its folder there)", "tensorboard")


def _check_wandb(run_dir: Path | None) -> None:
    """Online, W&B needs an API key: without one, wandb.init would ask for it at the
    terminal (or fail) once the data and the model are loaded. A resumed run's
    ``wandb/`` folder can be written."""
    if run_dir is not None:
        folder = run_dir / WANDB_DIR
        if folder.exists() and not folder.is_dir():
            raise FloodError(
                f"{folder} is not a folder (W&B writes its run files there); move it away, or drop wandb from --report-to"
            )
        target = folder if folder.is_dir() else run_dir
        _check_writable_folder(target, f"W&B's folder {folder}" if folder.is_dir() else f"the run folder {run_dir}", "wandb")
    if _wandb_mode() in ("offline", "dryrun", "disabled"):
        return
    netrc_file = os.environ.get("NETRC") or "~/.netrc"  # where wandb login writes the key
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_has(netrc_file, _wandb_host()):
        return
    raise FloodError(
        f"W&B has no API key (WANDB_API_KEY is not set and {netrc_file} has no entry for "
        f"{_wandb_host()}); run wandb login, or set WANDB_MODE=offline (wandb sync uploads later), "
        "or drop wandb from --report-to"
    )


def _wandb_mode() -> str:
    return (os.environ.get("WANDB_MODE") or "online").strip().lower()


def _wandb_host() -> str:
    from urllib.parse import urlparse

    base = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    return urlparse(base).hostname or base


def _netrc_has(path: str, host: str) -> bool:
    import netrc

    try:
        return netrc.netrc(os.path.expanduser(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _check_writable_folder(folder: Path, subject: str, tracker: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".flood-write-check-"):
            pass
    except OSError as exc:
        raise FloodError(
            f"{subject} is not writable ({exc.strerror or exc}), so {tracker} cannot log there; "
            f"make it writable, or drop {tracker} from --report-to"
        ) from None


def mlflow_uri(out_dir: Path) -> str:
    """The store a run in ``out_dir`` logs to: MLFLOW_TRACKING_URI, else mlflow.db beside the runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def _check_mlflow(out_dir: Path) -> None:
    uri = mlflow_uri(out_dir)
    from_env = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    database = _sqlite_file(uri)
    if database is not None:
        _check_sqlite(database, from_env)
    try:
        with _http_limits(retries=0, timeout=CHECK_TIMEOUT_S, force_retries=True), _one_database_attempt():
            _open_store(uri)
    except Exception as exc:  # whatever the store answered: it cannot take this run
        fix = (
            "start the server or correct MLFLOW_TRACKING_URI"
            if database is None
            else "correct MLFLOW_TRACKING_URI" if from_env else "move the store away (flood makes a new one)"
        )
        raise FloodError(
            f"MLflow store {uri}{' (MLFLOW_TRACKING_URI)' if from_env else ''} cannot be used: "
            f"{_reason(exc)}; {fix}, or drop mlflow from --report-to"
        ) from None


def _check_sqlite(database: Path, from_env: bool) -> None:
    """The file of a SQLite store is a SQLite file that can be written, in a folder that
    can be written (SQLite writes a journal beside it, flood a lock file); asked of SQLite
    itself, before MLflow (which retries a file it cannot open for two minutes)."""
    import sqlite3

    other = "set MLFLOW_TRACKING_URI to another store" if not from_env else "correct MLFLOW_TRACKING_URI"
    if database.is_dir():
        raise FloodError(
            f"MLflow store {database} is a folder, not a SQLite file; move it away (flood then makes a new store there) "
            f"or {other}, or drop mlflow from --report-to"
        )
    folder = database.parent
    if not folder.exists() and from_env:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FloodError(f"cannot create the folder of MLflow store {database}: {exc.strerror or exc}; {other}") from None
    _check_writable_folder(folder, f"the folder {folder} of MLflow store {database.name} (SQLite writes a journal there)", "mlflow")
    if not database.exists():
        return  # MLflow makes it
    try:
        os.close(os.open(database, os.O_RDWR))
    except OSError as exc:
        raise FloodError(
            f"MLflow store {database} is not writable ({exc.strerror or exc}); make it writable or {other}, "
            "or drop mlflow from --report-to"
        ) from None
    try:
        from urllib.parse import quote

        connection = sqlite3.connect(f"file:{quote(str(database))}?mode=rw", uri=True, timeout=CHECK_TIMEOUT_S)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        what = "is not a SQLite database (damaged, or another file)" if "not a database" in str(exc) else f"cannot be read ({exc})"
        raise FloodError(
            f"MLflow store {database} {what}; move it away (flood then makes a new store there) or {other}, "
            "or drop mlflow from --report-to"
        ) from None


def _open_store(uri: str) -> tuple[Any, str]:
    """A client of the store and experiment ``flood``'s id (made, with the store, if new)."""
    import mlflow

    # MLflow creates a new store's tables when its client is made (SqlAlchemyStore:
    # create_all, then alembic's migrations, unlocked), and then the experiment: two
    # processes doing either at once fail. One at a time per store file.
    with _first_use_lock(uri):
        _forget_replaced_store(uri)
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = _experiment_id(client)
        _SEEN_FILES[uri] = _identity(_sqlite_file(uri))
        return client, found


# The file each SQLite store's engine was made for, as flood last opened it.
_SEEN_FILES: dict[str, tuple[int, int] | None] = {}


def _identity(path: Path | None) -> tuple[int, int] | None:
    try:
        return None if path is None else (path.stat().st_dev, path.stat().st_ino)
    except OSError:
        return None


def _forget_replaced_store(uri: str) -> None:
    """MLflow keeps one engine per database URI for the life of the process
    (SqlAlchemyStore._engine_map), its pooled connections open on the file they were
    made for: a store deleted or replaced since (between the runs of a sweep's worker,
    or before a resume in the same process) would still be read through them, its new
    file half-made; and MLflow's client keeps the store object that holds that engine
    (TrackingStoreRegistry._get_store_with_resolved_uri, an lru_cache). Both are dropped,
    and a new store made for the file there now (its tables made if it is new)."""
    database = _sqlite_file(uri)
    if database is None:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", None)
    if not isinstance(engines, dict) or uri not in engines:
        return
    if uri in _SEEN_FILES and _SEEN_FILES[uri] == _identity(database) is not None:
        return
    with SqlAlchemyStore._engine_map_lock:
        engine = engines.pop(uri, None)
    if engine is not None:
        engine.dispose()
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    cached = getattr(TrackingStoreRegistry, "_get_store_with_resolved_uri", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()  # every URI's: the others are made again when next used


@contextlib.contextmanager
def _http_limits(retries: int, timeout: int, force_retries: bool = False) -> Iterator[None]:
    """MLflow's REST retries and timeout for the calls inside (read from the environment
    at each request: mlflow/utils/rest_utils.py), the user's own settings kept."""
    wanted = {HTTP_RETRIES: str(retries), HTTP_TIMEOUT: str(timeout)}
    saved = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        if saved[name] is None or (name == HTTP_RETRIES and force_retries):
            os.environ[name] = value
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


# What MLflow's REST client wraps (requests' and urllib3's long messages), said plainly.
_NETWORK_REASONS = (
    ("Connection refused", "connection refused"),
    ("timed out", f"no answer within the timeout ({HTTP_TIMEOUT})"),
    ("Name or service not known", "host name not found"),
    ("Failed to resolve", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
)


def _reason(exc: BaseException) -> str:
    """Why a store could not be used, on one short line."""
    text = str(exc)
    for found, reason in _NETWORK_REASONS:
        if found in text:
            return reason
    return shown(_first_line(exc), 160)


@contextlib.contextmanager
def _one_database_attempt() -> Iterator[None]:
    """A database store (sqlite:, postgresql:, mysql:) is tried once: MLflow tries to
    make its engine 10 times over 100 s, each failure logged (mlflow/store/db/utils.py,
    create_sqlalchemy_engine_with_retry, a module constant it reads at each attempt)."""
    from mlflow.store.db import utils

    saved = getattr(utils, "MAX_RETRY_COUNT", None)
    utils.MAX_RETRY_COUNT = 1
    try:
        yield
    finally:
        if saved is None:
            del utils.MAX_RETRY_COUNT
        else:
            utils.MAX_RETRY_COUNT = saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class TensorBoardTracker:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_threads()
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def start(self, config: dict[str, Any], resumed: bool) -> None:
        if not resumed:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```", 0)

    def log_row(self, row: dict[str, Any], step: int) -> None:
        for column, name in SCALARS.items():
            value = row.get(column)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("status", str(summary.get("status")), int(summary.get("steps_completed") or 0))
        self.writer.close()


def _quiet_writer_threads() -> None:
    """TensorBoard writes from a thread of its own; a write that fails there (a full disk,
    a folder made read-only) is kept in the thread and raised by the next add or flush,
    which flood reports in one line, and also printed by Python as a traceback
    ("Exception in thread …") across flood's lines. Not that print."""
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "flood_quiet_tensorboard", False):
        return

    def hook(args: Any) -> None:
        if isinstance(args.thread, _AsyncWriterThread):
            return
        previous(args)

    hook.flood_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class MlflowTracker:
    def __init__(self, run_dir: Path):
        import mlflow

        self.mlflow = mlflow
        self.run_dir = run_dir
        self.uri = mlflow_uri(run_dir.parent)
        with _http_limits(RUN_RETRIES, RUN_TIMEOUT_S):
            self.client, self.experiment_id = _open_store(self.uri)
        self.run_id: str | None = None

    def start(self, config: dict[str, Any], resumed: bool, run_id: str | None = None) -> tuple[str, str | None]:
        """This run's MLflow run id, and the id of the one it continues when that one is
        gone from the store (None when it is continued, or for a new run)."""
        with _http_limits(RUN_RETRIES, RUN_TIMEOUT_S):
            if run_id and self._exists(run_id):
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
                return run_id, None
            tags = {"flood.run_dir": str(self.run_dir)}
            if run_id:
                tags["flood.continues_mlflow_run"] = run_id
            run = self.client.create_run(self.experiment_id, run_name=self.run_dir.name, tags=tags)
            self.run_id = run.info.run_id
            params = [self.mlflow.entities.Param(key, _short(value)) for key, value in _flat(config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start : start + 100])
            return self.run_id, run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage != "deleted"
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def log_row(self, row: dict[str, Any], step: int) -> None:
        self.log_rows([(row, step)])

    def log_rows(self, rows: list[tuple[dict[str, Any], int]]) -> None:
        from mlflow.entities import Metric

        now = _millis()
        metrics = [
            Metric(column, float(value), now, step)
            for row, step in rows
            for column, value in row.items()
            if column in SCALARS and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        with _http_limits(RUN_RETRIES, RUN_TIMEOUT_S):
            for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def finish(self, summary: dict[str, Any]) -> None:
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(str(summary.get("status")), "FAILED")
        with _http_limits(RUN_RETRIES, RUN_TIMEOUT_S):
            self.client.set_tag(self.run_id, "flood.status", str(summary.get("status")))
            self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """One W&B run per flood run, its files in ``<run>/wandb/``; continued on resume."""

    def __init__(self, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.run_dir = run_dir
        self.project = os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
        self.run: Any = None

    def start(self, config: dict[str, Any], run_id: str | None = None) -> str:
        """This run's W&B run id: ``run_id`` (a resumed run's) continued, else a new one."""
        self.run = self.wandb.init(
            project=self.project,
            dir=str(self.run_dir),  # W&B makes its folder, wandb/, inside
            name=self.run_dir.name,
            group=os.environ.get(SWEEP_ENV) or None,
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",  # a sweep's worker runs one flood run after another
            settings=self.wandb.Settings(silent=True, console="off"),  # flood's terminal stays flood's
        )
        return str(self.run.id)

    def log_row(self, row: dict[str, Any], step: int) -> None:
        scalars = {
            name: float(value)
            for column, name in SCALARS.items()
            if isinstance(value := row.get(column), (int, float)) and math.isfinite(value)
        }
        self.run.log(scalars, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(
            {key: value for key, value in summary.items() if isinstance(value, (str, int, float, bool)) and key != "tracker_gaps"}
        )
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)

    def abandon(self) -> None:
        """A W&B run that failed is ended as failed, not left open in the process (a
        sweep's worker goes on to other runs)."""
        if self.run is not None:
            with contextlib.suppress(Exception):
                self.run.finish(exit_code=1)


def _sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URI (none for an in-memory one or another database)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def _first_use_lock(uri: str):
    """An exclusive lock on ``<db>.lock`` beside a SQLite store (nothing for a server)."""
    database = _sqlite_file(uri)
    if database is None:
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _experiment_id(client: Any) -> str:
    """Experiment ``flood``'s id, made if it is not there (a server may get two at once)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(MLFLOW_EXPERIMENT)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flat(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


class Trackers:
    """The run's trackers, fed by the loop on the main process. A run never depends on
    them: a tracker that fails (at its start, at a row, at the end) is warned about once
    and dropped, and the rows it lacks are kept in the summary (``tracker_gaps``: for
    each tracker, the steps of the rows it lacks and its error) and said at the end."""

    def __init__(self, names: list[str], run: Any, warn: Callable[[str], None] | None = None):
        check_available(names)
        self.run = run  # the RunDir: its summary takes the gaps
        self.warn = warn or (lambda text: None)
        # Gaps of an earlier attempt of a resumed run are kept: they are still gaps.
        self.gaps: dict[str, dict[str, Any]] = {name: dict(gap) for name, gap in (run.summary.get("tracker_gaps") or {}).items()}
        self.trackers: dict[str, Any] = {}
        self.failed: set[str] = set()
        for name in names:
            try:
                self.trackers[name] = TRACKERS[name](run.path)
            except Exception as exc:
                self._fail(name, exc, "at its start")

    def start(self, config: dict[str, Any], summary: dict[str, Any], rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """Start (or continue, on resume) each tracker; returns fields for the summary.
        ``rows`` are a resumed run's earlier rows (a new MLflow run is given them)."""
        fields: dict[str, Any] = {}
        for name, tracker in list(self.trackers.items()):
            try:
                if name == "mlflow":
                    previous = summary.get("mlflow_run_id")
                    run_id, lost = tracker.start(config, bool(previous), previous)
                    fields["mlflow_run_id"], fields["mlflow_tracking_uri"] = run_id, tracker.uri
                    if lost:
                        fields["mlflow_continues_run_id"] = lost
                        self._continue_lost_run(tracker, lost, rows)
                elif name == "wandb":
                    fields["wandb_run_id"] = tracker.start(config, summary.get("wandb_run_id"))
                    fields["wandb_project"] = tracker.project
                else:
                    tracker.start(config, bool(summary.get("resumed")))
            except Exception as exc:
                self._fail(name, exc, "at its start")
        return fields

    def _continue_lost_run(self, tracker: MlflowTracker, lost: str, rows: Sequence[dict[str, Any]]) -> None:
        copied = [(row, int(row["step"])) for row in rows if row.get("step") is not None]
        self.warn(
            f"mlflow: the run's MLflow run {lost} is not in {tracker.uri} (the store was deleted or replaced, or "
            f"MLFLOW_TRACKING_URI changed); this resume logs to a new MLflow run {tracker.run_id}, tagged "
            f"flood.continues_mlflow_run={lost}, with the {len(copied)} earlier row(s) copied from metrics.csv"
        )
        try:
            tracker.log_rows(copied)
        except Exception as exc:
            self._fail("mlflow", exc, "copying the earlier rows")
            self._lacks("mlflow", [step for _, step in copied])

    def log_row(self, row: dict[str, Any], step: int) -> None:
        for name in self.failed | set(self.trackers):
            tracker = self.trackers.get(name)
            if tracker is not None:
                try:
                    tracker.log_row(row, step)
                    continue
                except Exception as exc:
                    self._fail(name, exc, f"at step {step}")
            self._lacks(name, [step])

    def _fail(self, name: str, exc: BaseException, when: str) -> None:
        """Warn once, drop the tracker; training goes on."""
        tracker = self.trackers.pop(name, None)
        if hasattr(tracker, "abandon"):
            tracker.abandon()
        self.failed.add(name)
        error = shown(_first_line(exc), 200)
        self.gaps.setdefault(name, {"steps": []})["error"] = error
        self.run.summary["tracker_gaps"] = self.gaps
        self.warn(f"{name} failed {when} ({error}); training goes on without it, metrics.csv keeps every row")

    def _lacks(self, name: str, steps: list[int]) -> None:
        gap = self.gaps.setdefault(name, {"steps": [], "error": None})
        gap["steps"] = sorted(set(gap["steps"]) | set(steps))
        self.run.summary["tracker_gaps"] = self.gaps  # written with the row's summary

    def finish(self, summary: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
        """End each tracker with the run's status; then one line per tracker that lacks
        rows (``rows``: all the run's rows, for the count), also kept in summary.json."""
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.finish(summary)
            except Exception as exc:  # a tracker that fails at the end must not hide the run's own outcome
                self._fail(name, exc, "at the end")
        for name, gap in self.gaps.items():
            if gap["steps"]:
                self.warn(gap_line(name, gap, len(rows) if rows is not None else None))
        if self.gaps:
            with contextlib.suppress(OSError):  # a full disk: the run's own outcome is the one to report
                self.run.write_summary(tracker_gaps=self.gaps)


TRACKERS: dict[str, Callable[[Path], Any]] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


def gap_line(name: str, gap: dict[str, Any], total: int | None) -> str:
    """One line: the rows ``name`` lacks, by step, and why."""
    steps = gap["steps"]
    listed = ", ".join(map(str, steps)) if len(steps) <= 6 else f"{steps[0]}, {steps[1]}, …, {steps[-1]}"
    of = f" of {total}" if total is not None else ""
    why = f" ({gap['error']})" if gap.get("error") else ""
    return f"{name} lacks {len(steps)}{of} evaluation row(s), at step(s) {listed}{why}; metrics.csv has every row"
