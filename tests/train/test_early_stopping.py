"""train.early_stopping: the decision on scripted val_loss sequences, the step a tiny run
stops at (flooding with b = 0 stops exactly where baseline does), the patience counter
through a crash and resume, and what the console and summary.json say."""

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flood_cli.train.loop as train_module
from flood_cli.cli.main import app
from flood_cli.config.load import load_config
from flood_cli.core.errors import FloodError
from flood_cli.runs.columns import TIME_COLUMNS
from flood_cli.train import checkpoint
from flood_cli.train.entry import resume_training, run_training
from flood_cli.train.loop import RunResult
from flood_cli.train.stop import EarlyStopping
from tests.conftest import csv_bytes_without_time, small_config, write_config


def stop_step(losses: list[float], patience: int, min_delta: float = 0.0, every: int = 10) -> int | None:
    """The step (evaluations every ``every`` steps) a run with these val losses stops at."""
    decision = EarlyStopping(patience, min_delta)
    for index, loss in enumerate(losses, start=1):
        if decision.update(loss, index * every):
            return decision.stopped_at
    return None


@pytest.mark.parametrize(
    "losses, patience, min_delta, expected",
    [
        ([1.0, 0.9, 0.8, 0.7], 1, 0.0, None),  # improves every time: runs to the end
        ([1.0, 0.9, 0.95, 0.8], 1, 0.0, 30),  # one evaluation without improvement with patience 1
        ([1.0, 0.9, 0.95, 0.8, 0.85, 0.86], 2, 0.0, 60),  # the counter starts again at 0.8
        ([1.0, 0.9, 0.95, 0.96, 0.8], 2, 0.0, 40),
        ([1.0, 1.0], 1, 0.0, 20),  # equal to the best is no improvement
        # min_delta 0.1: 0.95 is below the best (1.0) but not by more than 0.1, and it
        # becomes the best: 0.86 improves on 1.0 by 0.14 but on 0.95 by only 0.09
        ([1.0, 0.95, 0.86], 2, 0.1, 30),
        ([1.0, 0.95, 0.84], 2, 0.1, None),
        ([1.0, 0.9, 0.8], 1, 0.1, 20),  # exactly min_delta lower is not more than min_delta
        ([1.0, math.nan, 0.9, math.nan, math.nan], 2, 0.0, 50),  # a nan never improves, nor becomes the best
        ([math.nan, 5.0], 1, 0.0, 10),
    ],
)
def test_stop_step_on_a_scripted_val_loss_sequence(losses, patience, min_delta, expected):
    assert stop_step(losses, patience, min_delta) == expected


def test_the_decision_continues_from_its_state():
    whole = EarlyStopping(3, 0.0)
    for step, loss in enumerate([1.0, 0.5, 0.6, 0.7], start=1):
        assert not whole.update(loss, step)
    resumed = EarlyStopping(3, 0.0, json.loads(json.dumps(whole.state())))
    assert resumed.state() == {"best": 0.5, "waiting": 2, "stopped_at": None}
    assert resumed.update(0.55, 5) and resumed.stopped_at == 5


def test_the_console_says_a_run_stopped_early_in_one_line(tmp_path, monkeypatch):
    result = RunResult(tmp_path, "completed", 0.5, 1.0, 12, [], stopped_at_step=24, stop_reason="val_loss did not improve by more than 0.001 for 3 evaluations (train.early_stopping)")
    monkeypatch.setattr("flood_cli.train.entry.run_training", lambda cfg, reporter=None: result)
    written = write_config(tmp_path, small_config(output={"dir": str(tmp_path / "runs")}))
    output = CliRunner().invoke(app, ["train", "--config", str(written), "--quiet"])
    assert output.exit_code == 0, output.output
    assert output.output.splitlines()[-1] == (
        "stopped early at step 24: val_loss did not improve by more than 0.001 for 3 evaluations (train.early_stopping)"
    )


# ---------------------------------------------------------------------------
# Training runs. lr 1e-3, an evaluation every 3 steps, 12 steps an epoch: val_loss
# is lowest at step 6 and rises after it, so patience 2 stops the run at step 12 of 36.

TRAIN = {"epochs": 3, "lr": 1e-3, "eval_every": 3, "early_stopping": {"patience": 2}}
STOP = 12


def config_for(tmp_path: Path, name: str, keep_checkpoint: bool = False, **train) -> Path:
    output = {"dir": str(tmp_path / "runs"), "name": name, "checkpoint_every": 5, "keep_checkpoint": keep_checkpoint}
    return write_config(tmp_path, small_config(train={**TRAIN, **train}, output=output), f"{name}.yaml")


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(handle)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_flooding_with_b_0_stops_early_exactly_as_baseline(tmp_path):
    baseline = run_training(load_config(config_for(tmp_path, "baseline")))
    flooding = run_training(load_config(config_for(tmp_path, "flooding", mode="flooding", b=0.0)))
    written = rows(baseline.run_dir)
    assert [int(row["step"]) for row in written] == [3, 6, 9, 12]
    losses = [float(row["val_loss"]) for row in written]
    assert losses[1] == min(losses) and losses[3] > losses[2] > losses[1]  # the early stop is real
    assert baseline.stopped_at_step == flooding.stopped_at_step == STOP
    assert baseline.stop_reason == "val_loss did not improve for 2 evaluations (train.early_stopping)"
    assert csv_bytes_without_time(flooding.run_dir) == csv_bytes_without_time(baseline.run_dir)
    for run in (baseline, flooding):
        final = summary(run.run_dir)
        assert (final["status"], final["stopped_early"], final["stopped_at_step"]) == ("completed", True, STOP)
        assert final["steps_completed"] == STOP and final["total_steps"] == 36
        assert not checkpoint.last_checkpoint(run.run_dir).exists()


@pytest.mark.slow
def test_a_run_that_trains_to_its_end_says_it_did_not_stop_early(tmp_path):
    result = run_training(load_config(config_for(tmp_path, "long", epochs=1, early_stopping={"patience": 4})))
    assert result.stopped_at_step is None
    final = summary(result.run_dir)
    assert final["status"] == "completed" and final["stopped_early"] is False and "stopped_at_step" not in final


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_same_stop_step(tmp_path, monkeypatch):
    """Crash at step 11: the last checkpoint (step 10) holds one evaluation without an
    improvement (step 9) and the best so far (step 6). Without them the resumed run would
    count afresh and run on past step 12."""
    reference = run_training(load_config(config_for(tmp_path, "reference", keep_checkpoint=True)))
    assert reference.stopped_at_step == STOP

    real, calls = train_module.step_loss_sum, {"n": 0}

    def failing(logits, labels):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("injected crash at step 11")
        return real(logits, labels)

    monkeypatch.setattr(train_module, "step_loss_sum", failing)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_training(load_config(config_for(tmp_path, "crashed")))
    monkeypatch.undo()
    crashed = tmp_path / "runs" / "crashed"
    assert summary(crashed)["status"] == "failed" and len(rows(crashed)) == 3

    result = resume_training(crashed)
    assert result.stopped_at_step == STOP
    assert csv_bytes_without_time(crashed) == csv_bytes_without_time(reference.run_dir)
    final = summary(crashed)
    assert (final["status"], final["stopped_early"], final["stopped_at_step"], final["resumed"]) == ("completed", True, STOP, 1)

    with pytest.raises(FloodError, match=f"^run {crashed} already completed; nothing to resume$"):
        resume_training(crashed)

    # Killed after the checkpoint of its stop step, before its summary said completed:
    # the resume takes no step and completes it, stopped early at the same step.
    (reference.run_dir / "summary.json").write_text(json.dumps({**summary(reference.run_dir), "status": "interrupted"}))
    before = csv_bytes_without_time(reference.run_dir)
    again = resume_training(reference.run_dir)
    assert again.stopped_at_step == STOP and csv_bytes_without_time(reference.run_dir) == before
    assert (summary(reference.run_dir)["status"], summary(reference.run_dir)["stopped_at_step"]) == ("completed", STOP)
