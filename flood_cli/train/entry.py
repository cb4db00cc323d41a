"""The entry points of training: a new run (`flood train`), a resumed one (`--resume`),
and what a run's folder says whatever stops it. AdaFlood's auxiliary runs are trained
through these same functions, handed to adaflood (which never imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flood_cli.config.load import changed_keys, changes_text, load_config
from flood_cli.config.schema import Config
from flood_cli.core.errors import FloodError, RunInterrupted, UnresumableRun
from flood_cli.core.reporting import NullReporter, Reporter
from flood_cli.runs.folder import CONFIG_FILE, RunDir, check_writable, read_run_file
from flood_cli.runs.tracking import check_trackers
from flood_cli.train import adaflood, checkpoint
from flood_cli.train.loop import RunResult, Trainer
from flood_cli.train.recorder import rows_written, start_again


def _fit_and_record(trainer: Trainer) -> RunResult:
    """Run the loop; whatever stops it, the summary says so and the CSV rows stay."""
    try:
        return trainer.fit()
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        trainer.checkpoints.settle_quietly()
        trainer.recorder.ended("interrupted", "interrupted")
        raise
    except BaseException as exc:
        trainer.checkpoints.settle_quietly()  # the last good checkpoint is recorded as such
        try:
            status = getattr(exc, "run_status", "failed")  # e.g. "pruned" by a sweep's pruner
            trainer.recorder.ended(status, f"{type(exc).__name__}: {exc}")
        except OSError:
            pass  # a full disk: the original error is the one to report
        raise
    finally:
        trainer.checkpoints.settle_quietly()  # the run folder stays locked until it is written
        trainer.recorder.close()


def run_training(cfg: Config, reporter: Reporter | None = None) -> RunResult:
    """Train one run as configured and leave its folder behind; return the best figures."""
    # Before any expensive work (the folder itself is claimed atomically later).
    check_writable(Path(cfg.output.dir))
    if cfg.output.report_to:
        check_trackers(list(cfg.output.report_to), Path(cfg.output.dir))
    if cfg.output.name is not None and (Path(cfg.output.dir) / cfg.output.name).exists():
        raise RunDir.name_taken(Path(cfg.output.dir) / cfg.output.name)
    reporter = reporter or NullReporter()
    trainer = Trainer(cfg, reporter, _mode_levels(cfg, reporter))
    trainer.open_new_run()
    return _fit_and_record(trainer)


def _mode_levels(cfg: Config, reporter: Reporter) -> torch.Tensor | None:
    """Per-example flood levels, for the one mode that needs runs of its own first."""
    if cfg.train.mode != "adaflood":
        return None
    return adaflood.levels_for(cfg, reporter, train=run_training, resume=resume_training)


def resume_training(run_dir: Path, reporter: Reporter | None = None) -> RunResult:
    """Continue a stopped run (killed, interrupted, failed) from its last checkpoint."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise FloodError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder that flood train printed")
    summary = RunDir(run_dir).load_summary()
    if summary.get("status") == "completed":
        raise FloodError(f"run {run_dir} already completed; nothing to resume")
    path = checkpoint.last_checkpoint(run_dir)
    rows = rows_written(run_dir)
    if not path.exists():
        if rows:
            error = summary.get("error")
            raise UnresumableRun(
                f"run {run_dir} has no checkpoint although metrics.csv has rows (writing it failed"
                f"{': ' + str(error)[:120] if error else ''})",
                start_again(run_dir, rows),
            )
        raise FloodError(f"run {run_dir} has no checkpoint (it stopped before its first evaluation); start it again")
    try:
        # Before anything is built: a checkpoint that cannot be used is said at once.
        state = checkpoint.load(path)
    except checkpoint.UnreadableCheckpoint as exc:
        raise UnresumableRun(str(exc), start_again(run_dir, rows)) from None
    cfg = load_config(config_path, new_run=False, read_run_file=read_run_file)
    _check_same_experiment(run_dir, state["experiment"], cfg.experiment_dict())
    if cfg.output.report_to:  # before the data and the model, and before the summary says "running"
        check_trackers(list(cfg.output.report_to), run_dir.parent, run_dir)
    reporter = reporter or NullReporter()
    trainer = Trainer(cfg, reporter, _mode_levels(cfg, reporter))
    _check_same_setup(trainer, run_dir, state)
    trainer.reopen_run(run_dir, state)
    return _fit_and_record(trainer)


def _check_same_setup(trainer: Trainer, run_dir: Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint that this launch or data cannot continue: another process
    count, another number of steps, other data."""
    processes = trainer.accelerator.num_processes
    if state["num_processes"] != processes:
        raise FloodError(
            f"run {run_dir} was trained by {state['num_processes']} process(es), this resume has {processes}; "
            f"resume it with {state['num_processes']} (batch_size is per process, so the steps would differ)"
        )
    if state["total_steps"] != trainer.total_steps:
        raise FloodError(
            f"checkpoint of {run_dir} expects {state['total_steps']} steps but the data now gives {trainer.total_steps}; "
            "the data files changed since the run started, start a new run"
        )
    _check_same_data(run_dir, trainer.cfg, state.get("data"), trainer.data.fingerprints())


# Settings that say how or where a run goes, not what it computes: they may change
# between a checkpoint and its resume (the run folder moved, another machine).
RESUMABLE_CHANGES = ("output.", "runtime.device", "runtime.num_workers")

# Keys added since checkpoints were first written, at their defaults: a checkpoint from
# before holds none of them and resumes as it was.
ADDED_SINCE: tuple[tuple[str, Any, Any], ...] = (("train.metrics", None, []),)


def _check_same_experiment(run_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse a resume whose config.yaml was edited since the checkpoint: the later rows
    would belong to another experiment than the earlier ones and the summary."""

    changed = [
        change for change in changed_keys(saved, now)
        if not change[0].startswith(RESUMABLE_CHANGES) and change not in ADDED_SINCE
    ]
    if changed:
        raise FloodError(
            f"{run_dir / CONFIG_FILE} was edited since the checkpoint: {changes_text(changed, _short, 5)}; the rows so far were trained "
            "with the checkpoint's values: put them back to resume, or start a new run with the new ones"
        )


def _check_same_data(run_dir: Path, cfg: Config, saved: dict[str, str] | None, now: dict[str, str]) -> None:
    """Refuse a resume whose data changed since the checkpoint (a file rewritten, even at
    the same size and time, another tokenizer): the later rows would be trained on
    other examples than the earlier ones. Checkpoints from before 2026-12-03 hold no
    fingerprint and are not checked."""
    if saved is None:
        return
    changed = [role for role in ("train", "validation", "test") if saved.get(role) != now.get(role)]
    if not changed:
        return
    data = cfg.data

    def source(role: str) -> str:
        path = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}[role]
        if path is not None:
            return f"{role} data ({path})"
        if role == "validation" and data.validation_file is None:
            return f"validation data (split off {data.train_file or data.dataset})"
        return f"{role} data ({data.dataset})"

    raise FloodError(
        f"the {', '.join(source(role) for role in changed)} of run {run_dir} changed since its checkpoint "
        "(other token ids or labels); the rows so far were trained on the old data: put it back to resume, "
        f"or start a new run on the new data: flood train --config {run_dir / CONFIG_FILE} --name NEW"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
