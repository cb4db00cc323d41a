"""Experiment tracking where users already look: TensorBoard and MLflow (`output.report_to`).

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

Both are optional extras (``pip install 'flood-cli[tensorboard]'`` / ``[mlflow]``).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Optional

from flood_cli.errors import FloodError

TENSORBOARD_DIR = "tensorboard"
MLFLOW_EXPERIMENT = "flood"
# CSV column -> scalar name (train/ and val/ prefixes group them in both UIs).
SCALARS = {
    "train_loss": "train/loss",
    "train_objective": "train/objective",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "best_val_loss": "val/best_loss",
    "val_loss_top10_share": "val/loss_top10_share",
    "val_ece": "val/ece",
    "val_confidence": "val/confidence",
    "val_confident_wrong": "val/confident_wrong",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "lr": "train/lr",
    "flood_active": "train/flood_active",
    "epoch": "epoch",
}
INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_available(names: list[str]) -> None:
    """Before any work: a tracker whose package is missing is one line with the fix."""
    for name in names:
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        try:
            __import__(module)
        except ImportError:
            raise FloodError(
                f"output.report_to lists {name}, but the {module} package is not installed; "
                f"pip install 'flood-cli[{INSTALL[name]}]', or drop {name} from --report-to"
            ) from None


class TensorBoardTracker:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

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


class MlflowTracker:
    def __init__(self, run_dir: Path):
        import mlflow

        self.mlflow = mlflow
        self.run_dir = run_dir
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
        # MLflow creates a new store's tables when its client is made (SqlAlchemyStore:
        # create_all, then alembic's migrations, unlocked), and then the experiment: two
        # processes doing either at once fail. One at a time per store file.
        with _first_use_lock(uri):
            self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
            self.experiment_id = _experiment_id(self.client)
        self.uri = uri
        self.run_id: Optional[str] = None

    def start(self, config: dict[str, Any], resumed: bool, run_id: Optional[str] = None) -> str:
        experiment_id = self.experiment_id
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags={"flood.run_dir": str(self.run_dir)})
        self.run_id = run.info.run_id
        params = [self.mlflow.entities.Param(key, _short(value)) for key, value in _flat(config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        return self.run_id

    def log_row(self, row: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = _millis()
        metrics = [
            Metric(column, float(value), now, step)
            for column, value in row.items()
            if column in SCALARS and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any]) -> None:
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(str(summary.get("status")), "FAILED")
        self.client.set_tag(self.run_id, "flood.status", str(summary.get("status")))
        self.client.set_terminated(self.run_id, status=status)


def _sqlite_file(uri: str) -> Optional[Path]:
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
    """The run's trackers, fed by the loop on the main process."""

    def __init__(self, names: list[str], run_dir: Path):
        check_available(names)
        self.trackers: dict[str, Any] = {}
        for name in names:
            self.trackers[name] = TensorBoardTracker(run_dir) if name == "tensorboard" else MlflowTracker(run_dir)

    def start(self, config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        """Start (or continue, on resume) each tracker; returns fields for the summary."""
        fields = {}
        for name, tracker in self.trackers.items():
            if name == "mlflow":
                fields["mlflow_run_id"] = tracker.start(config, bool(summary.get("mlflow_run_id")), summary.get("mlflow_run_id"))
                fields["mlflow_tracking_uri"] = tracker.uri
            else:
                tracker.start(config, bool(summary.get("resumed")))
        return fields

    def log_row(self, row: dict[str, Any], step: int) -> None:
        for tracker in self.trackers.values():
            tracker.log_row(row, step)

    def finish(self, summary: dict[str, Any]) -> None:
        for tracker in self.trackers.values():
            try:
                tracker.finish(summary)
            except Exception:  # a tracker that fails at the end must not hide the run's own outcome
                pass
