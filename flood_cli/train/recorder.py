"""The run folder of a run in training: its metrics.csv rows, summary.json and trackers.

The main process keeps the folder; every process keeps the rows (a run's result). On the
other processes ``run`` is None and only the rows are kept. No torch here.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flood_cli.config.schema import Config
from flood_cli.core.metrics import BY_NAME
from flood_cli.core.reporting import Reporter
from flood_cli.runs.folder import CONFIG_FILE, METRICS_FILE, RunDir, default_run_name, now_iso, read_metrics
from flood_cli.runs.tracking import Trackers


class RunRecorder:
    def __init__(self, cfg: Config, reporter: Reporter, run: RunDir | None = None, rows: list[dict[str, Any]] | None = None):
        self.cfg = cfg
        self.reporter = reporter
        self.run = run
        self.rows: list[dict[str, Any]] = rows if rows is not None else []
        self.trackers: Any = None

    def _folder(self) -> RunDir:
        """The run folder, for what only the main process (which has one) does."""
        if self.run is None:
            raise AttributeError("this process keeps no run folder")
        return self.run

    @classmethod
    def create(
        cls, cfg: Config, reporter: Reporter, columns: tuple[str, ...], meta: Callable[[], dict[str, Any]], data: Any, total_steps: int
    ) -> RunRecorder:
        """A new run folder under output.dir: config.yaml, metrics.csv's header, a running summary."""
        train = cfg.train
        default = default_run_name(train.mode, train.lr, train.seed, train.b, train.ascent_lr)
        run = RunDir.create(Path(cfg.output.dir), cfg.output.name, default)
        recorder = cls(cfg, reporter, run)
        try:
            run.lock()
            experiment = cfg.experiment_dict()
            experiment["output"]["name"] = run.path.name
            # Absolute, like the data paths: the saved config runs again from any folder.
            experiment["output"]["dir"] = str(run.path.parent.resolve())
            run.write_config(experiment, meta())
            run.open_metrics(columns)
            run.write_summary(
                status="running",
                error=None,
                name=run.path.name,
                mode=train.mode,
                b=train.b,
                lr=train.lr,
                ascent_lr=train.ascent_lr,
                seed=train.seed,
                epochs=train.epochs,
                model=cfg.model.describe(),
                data=data.description,
                num_labels=len(data.label_names),
                num_train_examples=data.counts.get("train", 0),
                num_val_examples=data.counts.get("validation", 0),
                num_test_examples=data.counts.get("test", 0),
                total_steps=total_steps,
                steps_completed=0,
                started_at=now_iso(),
            )
            recorder._start_trackers(experiment)
        except BaseException:
            # A folder that never became a run (a full disk, a signal) is not left
            # behind: it would only block a retry under the same --name.
            run.discard()
            raise
        return recorder

    @classmethod
    def reopen(cls, cfg: Config, reporter: Reporter, run_dir: Path, columns: tuple[str, ...], rows_written: int) -> RunRecorder:
        """A stopped run's folder, its metrics.csv cut back to the checkpoint's rows."""
        run = RunDir(run_dir)
        run.lock()
        recorder = cls(cfg, reporter, run, run.reopen_metrics(columns, rows_written))
        run.load_summary()
        run.started -= float(run.summary.get("wall_time_s") or 0.0)  # wall time keeps counting
        resumes = run.summary.get("resumed", 0) + 1
        run.write_summary(status="running", error=None, resumed=resumes, resumed_at=now_iso())
        recorder._start_trackers(cfg.experiment_dict())
        return recorder

    def _start_trackers(self, experiment: dict[str, Any]) -> None:
        """TensorBoard and MLflow, when output.report_to names them (main process only)."""
        if not self.cfg.output.report_to:
            return

        run = self._folder()
        self.trackers = Trackers(list(self.cfg.output.report_to), run, self.reporter.warning)
        fields = self.trackers.start(experiment, run.summary, self.rows)
        if fields:
            run.write_summary(**fields)

    def record(self, row: dict[str, Any], progress: Any) -> None:
        """An evaluation row: kept, appended to metrics.csv, logged, summed up in summary.json."""
        self.rows.append(row)
        if self.run is None:
            return
        self.run.append_metrics(row)
        if self.trackers is not None:
            self.trackers.log_row(row, progress.step)
        best = progress.best
        self.run.write_summary(
            best_val_loss=best["val_loss"],
            best_epoch=best["epoch"],
            best_step=best["step"],
            val_accuracy_at_best=best["val_accuracy"],
            best_val_accuracy=progress.best_accuracy["val_accuracy"],
            best_val_accuracy_epoch=progress.best_accuracy["epoch"],
            best_val_accuracy_step=progress.best_accuracy["step"],
            final_val_loss=row["val_loss"],
            final_val_accuracy=row["val_accuracy"],
            **self._metric_summary(row, best["step"]),
            steps_completed=progress.step,
        )

    def _metric_summary(self, row: dict[str, Any], best_loss_step: int) -> dict[str, Any]:
        """Each configured metric at the best-loss evaluation, its own best (the highest,
        or the lowest where lower is better) with that evaluation's epoch and step, and
        its last value; None where undefined. The values as metrics.csv has them (8
        significant digits): a resumed run, which reads the earlier rows back from it,
        writes the same summary as an uninterrupted one."""
        fields: dict[str, Any] = {}
        at_best: dict[str, Any] = next((kept for kept in reversed(self.rows) if kept["step"] == best_loss_step), {})
        for name in self.cfg.train.metrics:
            column = f"val_{name}"
            sign = 1.0 if BY_NAME[name].higher_is_better else -1.0
            defined = [kept for kept in self.rows if kept.get(column) is not None]
            top = max(defined, key=lambda kept: sign * float(f"{kept[column]:.8g}"), default=None)  # the first of equals
            fields.update({
                f"val_{name}_at_best": as_written(at_best.get(column)),
                f"best_val_{name}": as_written(top[column]) if top else None,
                f"best_val_{name}_epoch": top["epoch"] if top else None,
                f"best_val_{name}_step": int(top["step"]) if top else None,
                f"final_val_{name}": as_written(row.get(column)),
            })
        return fields

    def completed(self, **fields: Any) -> None:
        """The run trained to its end, or early stopping ended it (``fields``: stopped_early, stopped_at_step)."""
        run = self._folder()
        run.check_intact()
        self.reporter.before_write()
        run.write_summary(status="completed", finished_at=now_iso(), **fields)

    def stopped_by(self, name: str) -> None:
        """The run was stopped by signal ``name`` (its checkpoint is written)."""
        if self.run is not None:
            self.reporter.before_write()
            self.run.write_summary(status="interrupted", error=f"stopped by {name}", finished_at=now_iso())

    def ended(self, status: str, error: str) -> None:
        """Whatever else stopped the run (Ctrl-C twice, an error), said in summary.json."""
        if self.run is not None:
            self.run.write_summary(status=status, error=error, finished_at=now_iso())

    def close(self) -> None:
        """The trackers end with the run's status; the folder is unlocked."""
        if self.run is not None:
            if self.trackers is not None:
                self.trackers.finish(self.run.summary, self.rows)  # completed, failed or interrupted
            self.run.close()


def as_written(value: float | None) -> float | None:
    """A figure as metrics.csv holds it (8 significant digits)."""
    return None if value is None else float(f"{value:.8g}")


def rows_written(run_dir: Path) -> list[dict[str, Any]]:
    """The rows a run's metrics.csv holds, none if it cannot be read."""
    try:
        return read_metrics(run_dir / METRICS_FILE)
    except (OSError, ValueError, csv.Error):
        return []


def start_again(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    """What to do when a run cannot be resumed: its rows stay, the training restarts."""
    kept = ""
    if rows:
        last = rows[-1].get("step")
        kept = f"metrics.csv keeps its {len(rows)} row(s)" + (f" (to step {int(last)})" if last is not None else "") + " but "
    return (
        f"{kept}training cannot continue from them: start the run again under a new name, "
        f"e.g. flood train --config {run_dir / CONFIG_FILE} --name NEW"
    )
