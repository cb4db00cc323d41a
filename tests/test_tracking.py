"""TensorBoard and MLflow get every evaluation row, read back through their own readers
(offline: event files, and MLflow's client on a local SQLite store)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

import flood_cli.train as train_module
from flood_cli.config import load_config
from flood_cli.errors import FloodError
from flood_cli.train import resume_training, run_training
from tests.conftest import ROOT, small_config, write_config

FLOODING = {"mode": "flooding", "b": 0.66, "epochs": 2, "eval_every": 6}


def config(tmp_path: Path, name: str, report_to: list[str], **output) -> Path:
    raw = small_config(train=FLOODING, output={"dir": str(tmp_path / "runs"), "name": name, "report_to": report_to, **output})
    return write_config(tmp_path, raw, f"{name}.yaml")


def csv_column(run_dir: Path, column: str) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(handle)]


@pytest.fixture(autouse=True)
def no_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_tensorboard_gets_the_raw_loss_and_the_flooded_objective_apart(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_training(load_config(config(tmp_path, "tb", ["tensorboard"])))
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    for column, name in (("train_loss", "train/loss"), ("train_objective", "train/objective"), ("val_loss", "val/loss"), ("val_ece", "val/ece")):
        logged = [(event.step, event.value) for event in events.Scalars(name)]
        expected = csv_column(result.run_dir, column)
        assert [step for step, _ in logged] == [step for step, _ in expected]
        for (_, got), (_, want) in zip(logged, expected):
            assert got == pytest.approx(want, rel=1e-6), column
    raw, flooded = events.Scalars("train/loss"), events.Scalars("train/objective")
    assert any(abs(a.value - b.value) > 1e-3 for a, b in zip(raw, flooded)), "b should flood some steps: the two must differ"
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_gets_params_every_row_and_the_status_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    real = train_module.step_loss_sum
    calls = {"n": 0}

    def crash_at_step_15(logits, labels):
        calls["n"] += 1
        if calls["n"] == 15:
            raise RuntimeError("injected crash")
        return real(logits, labels)

    monkeypatch.setattr(train_module, "step_loss_sum", crash_at_step_15)
    with pytest.raises(RuntimeError):
        run_training(load_config(config(tmp_path, "ml", ["mlflow"], checkpoint_every=3)))
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs" / "ml"
    summary = json.loads((run_dir / "summary.json").read_text())
    client = MlflowClient(summary["mlflow_tracking_uri"])
    assert summary["mlflow_tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FAILED"

    resume_training(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    run = client.get_run(summary["mlflow_run_id"])  # the same MLflow run, continued
    assert run.info.status == "FINISHED" and run.data.tags["flood.status"] == "completed"
    assert run.data.params["train.b"] == "0.66" and run.data.params["train.mode"] == "flooding"
    for column in ("train_loss", "train_objective", "val_accuracy"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, column))
        # Rows written before the crash were logged once; the resumed rows once more each.
        assert [step for step, _ in history] == [step for step, _ in csv_column(run_dir, column)]
        for (_, got), (_, want) in zip(history, csv_column(run_dir, column)):
            assert got == pytest.approx(want, rel=1e-6), column
    assert len(client.search_runs([client.get_experiment_by_name("flood").experiment_id])) == 1


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(FloodError) as caught:
        run_training(load_config(config(tmp_path, "missing", ["tensorboard", "mlflow"])))
    assert str(caught.value) == (
        "output.report_to lists mlflow, but the mlflow package is not installed; "
        "pip install 'flood-cli[mlflow]', or drop mlflow from --report-to"
    )
    assert not (tmp_path / "runs" / "missing").exists()


def test_report_to_takes_a_comma_list_and_refuses_unknown_trackers_in_one_line(tmp_path):
    from flood_cli.config import OutputConfig

    assert OutputConfig(report_to="tensorboard, mlflow").report_to == ["tensorboard", "mlflow"]
    path = config(tmp_path, "wandb", ["tensorboard"])
    with pytest.raises(FloodError) as caught:
        load_config(path, sets=["output.report_to=wandb"])
    assert str(caught.value).endswith("output.report_to.0: input should be 'tensorboard' or 'mlflow' (got 'wandb')")


# Each child imports MLflow once, then makes a tracker for every folder it is sent on
# stdin and answers "ok" or the error's first line: the parent sends one folder to both
# children at the same instant, so both make the store's tables at once.
_TRACKER_CHILD = """
import sys
from pathlib import Path
from flood_cli.tracking import MlflowTracker
print("ready", flush=True)
for line in sys.stdin:
    folder, name = line.split()
    try:
        tracker = MlflowTracker(Path(folder) / name)
        tracker.start({"train": {"b": 0.1}}, False)
        print("ok", flush=True)
    except Exception as exc:
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
"""


def test_two_processes_making_the_default_mlflow_store_at_once_both_get_their_run(tmp_path):
    import subprocess

    from mlflow.tracking import MlflowClient

    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)
    children = [
        subprocess.Popen([sys.executable, "-c", _TRACKER_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(2)
    ]
    try:
        assert [child.stdout.readline().strip() for child in children] == ["ready", "ready"]
        for round_ in range(3):  # without the lock every round failed (10 of 10 tried)
            folder = tmp_path / f"round{round_}" / "runs"
            folder.mkdir(parents=True)
            for index, child in enumerate(children):
                child.stdin.write(f"{folder} run{index}\n")
            for child in children:
                child.stdin.flush()
            answers = [child.stdout.readline().strip() for child in children]
            assert answers == ["ok", "ok"], f"round {round_}: {answers}"
            client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
            runs = client.search_runs([client.get_experiment_by_name("flood").experiment_id])
            assert sorted(run.info.run_name for run in runs) == ["run0", "run1"]
    finally:
        for child in children:
            child.stdin.close()
            child.wait(timeout=60)


@pytest.mark.distributed  # several worker processes, ~40 s on 2 cores
def test_a_two_worker_sweep_reporting_to_a_fresh_mlflow_store_runs_both(tmp_path):
    """Both workers start their first run (and so the store) at about the same time."""
    import yaml
    from mlflow.tracking import MlflowClient

    from tests.test_sweep import flood, tiny_config

    base = tiny_config(tmp_path)
    raw = yaml.safe_load(base.read_text())
    raw["output"]["report_to"] = ["mlflow"]
    base.write_text(yaml.safe_dump(raw))
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    result = flood("sweep", "-c", str(base), "--b", "0.2", "--seeds", "1", "--workers", "2", "--out", str(tmp_path / "sweeps"), "--name", "ml", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]  # before: "baseline-s1: failed (OperationalError: … duplicate column name: step"
    runs = tmp_path / "sweeps" / "ml" / "runs"
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    logged = client.search_runs([client.get_experiment_by_name("flood").experiment_id])
    assert sorted((run.info.run_name, run.info.status) for run in logged) == [("baseline-s1", "FINISHED"), ("flooding-b0.2-s1", "FINISHED")]
