"""TensorBoard and MLflow get every evaluation row, read back through their own readers
(offline: event files, and MLflow's client on a local SQLite store)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

import flood_cli.train.loop as train_module
from flood_cli.config.load import load_config
from flood_cli.core.errors import FloodError
from flood_cli.core.reporting import NullReporter
from flood_cli.train.entry import resume_training, run_training
from tests.conftest import ROOT, small_config, write_config

pytestmark = pytest.mark.slow  # trains models (pytest -m "not slow" leaves it out)

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
        for (_, got), (_, want) in zip(logged, expected, strict=True):
            assert got == pytest.approx(want, rel=1e-6), column
    raw, flooded = events.Scalars("train/loss"), events.Scalars("train/objective")
    assert any(abs(a.value - b.value) > 1e-3 for a, b in zip(raw, flooded, strict=True)), "b should flood some steps: the two must differ"
    assert "config" in events.Tags()["tensors"] or "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_gets_params_every_row_and_the_status_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    run_dir = crashed_run(tmp_path, "ml", ["mlflow"], monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
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
        for (_, got), (_, want) in zip(history, csv_column(run_dir, column), strict=True):
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
    from flood_cli.config.schema import OutputConfig

    assert OutputConfig(report_to="tensorboard, mlflow,wandb").report_to == ["tensorboard", "mlflow", "wandb"]
    path = config(tmp_path, "comet", ["tensorboard"])
    with pytest.raises(FloodError) as caught:
        load_config(path, sets=["output.report_to=comet"])
    assert str(caught.value).endswith("output.report_to.0: input should be 'tensorboard', 'mlflow' or 'wandb' (got 'comet')")


# Each child imports MLflow once, then makes a tracker for every folder it is sent on
# stdin and answers "ok" or the error's first line: the parent sends one folder to both
# children at the same instant, so both make the store's tables at once.
_TRACKER_CHILD = """
import sys
from pathlib import Path
from flood_cli.runs.tracking import MlflowTracker
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

    from tests.sweep.test_sweep import flood, tiny_config

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


# ---------------------------------------------------------------------------
# A tracker that cannot be written: one line before the data and the model are loaded;
# a tracker that fails once training runs: a warning, and the run goes on.

# `flood` in a child process, which says on stderr when it starts loading the data and
# the model: every refusal below must come before that line would.
_FLOOD = """
import sys
import flood_cli.train.loop as train
real = train.Trainer.__init__
def marked(self, *args, **kwargs):
    print("loading data and model", file=sys.stderr, flush=True)
    real(self, *args, **kwargs)
train.Trainer.__init__ = marked
from flood_cli.cli.main import main
sys.argv[0] = "flood"
main()
"""


def flood_child(*args: str, timeout: float, env_extra: dict[str, str] | None = None):
    """The CLI in a child process, killed after ``timeout`` s (a hang fails the test)."""
    import subprocess

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", _FLOOD, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made read-only for this process. As root chmod does not stop a write
    (root passes permission checks): there the folder or file is made immutable
    (chattr +i, which stops root too); otherwise its write bits are taken off."""
    import subprocess

    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i does not work here: {made.stderr.decode().strip()}")
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)  # noqa: E731
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        undo = lambda: path.chmod(mode)  # noqa: E731
    try:
        probe = path / ".probe" if path.is_dir() else path
        try:
            with open(probe, "a"):
                pass
        except OSError:
            pass
        else:
            pytest.skip(f"{path} stays writable for this user")
        yield
    finally:
        undo()


def crashed_run(tmp_path: Path, name: str, report_to: list[str], monkeypatch) -> Path:
    """A run that crashed at step 15 of 24, with checkpoints and 2 rows (steps 6 and 12)."""
    real = train_module.step_loss_sum
    calls = {"n": 0}

    def crash_at_step_15(logits, labels):
        calls["n"] += 1
        if calls["n"] == 15:
            raise RuntimeError("injected crash")
        return real(logits, labels)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "step_loss_sum", crash_at_step_15)
        with pytest.raises(RuntimeError):
            run_training(load_config(config(tmp_path, name, report_to, checkpoint_every=3)))
    run_dir = tmp_path / "runs" / name
    assert [step for step, _ in csv_column(run_dir, "val_loss")] == [6, 12]
    return run_dir


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("summary.json", "metrics.csv")}


class Warnings(NullReporter):
    def __init__(self):
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


def no_loading(monkeypatch) -> None:
    """The data and the model must not be loaded: a refusal comes before."""

    def loading(*args, **kwargs):
        raise AssertionError("the data and the model were loaded before the tracker was checked")

    monkeypatch.setattr(train_module, "Trainer", loading)


def test_an_unreachable_mlflow_server_is_one_line_in_seconds_before_the_data_is_loaded(tmp_path):
    path = config(tmp_path, "server", ["mlflow"])
    started = time.monotonic()
    # Before: no output for 255 s (MLflow's 7 retries), then "unexpected MlflowException".
    result = flood_child("train", "-c", str(path), timeout=120, env_extra={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: MLflow store http://127.0.0.1:1 (MLFLOW_TRACKING_URI) cannot be used: connection refused; "
        "start the server or correct MLFLOW_TRACKING_URI, or drop mlflow from --report-to"
    ]
    assert not (tmp_path / "runs" / "server").exists()
    print(f"refused in {elapsed:.1f} s")


def test_a_sweep_whose_base_config_reports_to_an_unreachable_mlflow_is_one_line_before_any_worker(tmp_path):
    """Before, every run of the sweep failed on it, one trial after another."""
    path = config(tmp_path, "server", ["mlflow"])
    result = flood_child(
        "sweep", "-c", str(path), "--b", "0.1", "--seeds", "1", "--out", str(tmp_path / "sweeps"), "--name", "sw",
        timeout=120, env_extra={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: MLflow store http://127.0.0.1:1 (MLFLOW_TRACKING_URI) cannot be used: connection refused; "
        "start the server or correct MLFLOW_TRACKING_URI, or drop mlflow from --report-to"
    ]
    assert not list((tmp_path / "sweeps" / "sw" / "workers").glob("*.log"))  # no worker was started
    assert not list((tmp_path / "sweeps" / "sw" / "runs").iterdir())


def test_an_mlflow_db_that_is_a_folder_is_one_line_before_the_data_is_loaded(tmp_path):
    (tmp_path / "runs" / "mlflow.db").mkdir(parents=True)
    path = config(tmp_path, "folder", ["mlflow"])
    # Before: 112 s of "Operation will be retried in …" after the data and model were
    # loaded, then "unexpected OperationalError".
    result = flood_child("train", "-c", str(path), timeout=90)
    assert result.returncode == 1
    store = tmp_path / "runs" / "mlflow.db"
    assert result.stderr.splitlines() == [
        f"error: MLflow store {store} is a folder, not a SQLite file; move it away (flood then makes a new store there) "
        "or set MLFLOW_TRACKING_URI to another store, or drop mlflow from --report-to"
    ]
    assert not (tmp_path / "runs" / "folder").exists()


def test_an_mlflow_store_in_a_read_only_folder_is_one_line_before_the_data_is_loaded(tmp_path):
    """A store named by MLFLOW_TRACKING_URI in a folder flood cannot write (made immutable
    as root, where chmod does not bite; read-only by mode otherwise)."""
    folder = tmp_path / "stores"
    folder.mkdir()
    path = config(tmp_path, "ro", ["mlflow"])
    with read_only(folder):
        # Before: about 100 s of MLflow's retries to make its engine, then "unexpected".
        result = flood_child("train", "-c", str(path), timeout=90, env_extra={"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"})
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: the folder {folder} of MLflow store mlflow.db (SQLite writes a journal there) is not writable (")
    assert line.endswith("), so mlflow cannot log there; make it writable, or drop mlflow from --report-to")
    assert not (tmp_path / "runs" / "ro").exists()


@pytest.mark.parametrize("resumed", [False, True], ids=["new", "resume"])
def test_an_mlflow_db_of_random_bytes_is_one_line_naming_it(tmp_path, monkeypatch, resumed):
    store = tmp_path / "runs" / "mlflow.db"
    if resumed:
        run_dir = crashed_run(tmp_path, "damaged", ["mlflow"], monkeypatch)
        before = run_files(run_dir)
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_bytes(os.urandom(4096))
    no_loading(monkeypatch)
    with pytest.raises(FloodError) as caught:  # before: "unexpected DatabaseError", the file not named
        if resumed:
            resume_training(run_dir)
        else:
            run_training(load_config(config(tmp_path, "new", ["mlflow"])))
    assert str(caught.value) == (
        f"MLflow store {store} is not a SQLite database (damaged, or another file); move it away (flood then makes a new "
        "store there) or set MLFLOW_TRACKING_URI to another store, or drop mlflow from --report-to"
    )
    if resumed:
        assert run_files(run_dir) == before  # the refused resume wrote nothing
    else:
        assert not (tmp_path / "runs" / "new").exists()


def test_a_read_only_mlflow_db_is_one_line_before_the_data_is_loaded(tmp_path, monkeypatch):
    run_training(load_config(config(tmp_path, "first", ["mlflow"])))
    store = tmp_path / "runs" / "mlflow.db"
    no_loading(monkeypatch)
    with read_only(store), pytest.raises(FloodError) as caught:
        run_training(load_config(config(tmp_path, "second", ["mlflow"])))
    assert str(caught.value).startswith(f"MLflow store {store} is not writable (")
    assert str(caught.value).endswith(
        "); make it writable or set MLFLOW_TRACKING_URI to another store, or drop mlflow from --report-to"
    )


def test_a_read_only_tensorboard_folder_refuses_the_resume_in_one_line_and_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    run_dir = crashed_run(tmp_path, "tb", ["tensorboard"], monkeypatch)
    before = run_files(run_dir)
    with read_only(run_dir / "tensorboard"):
        # Before: TensorBoard's writer thread printed a traceback across flood's line,
        # and summary.json was left "running" with "resumed" counted up.
        result = flood_child("train", "--resume", str(run_dir), timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: TensorBoard's folder {run_dir / 'tensorboard'} is not writable (")
    assert line.endswith("), so tensorboard cannot log there; make it writable, or drop tensorboard from --report-to")
    assert run_files(run_dir) == before


def test_a_tensorboard_path_that_is_a_file_refuses_the_resume_in_one_line(tmp_path, monkeypatch):
    run_dir = crashed_run(tmp_path, "tbfile", ["tensorboard"], monkeypatch)
    shutil.rmtree(run_dir / "tensorboard")
    (run_dir / "tensorboard").write_text("not a folder")
    before = run_files(run_dir)
    no_loading(monkeypatch)
    with pytest.raises(FloodError) as caught:
        resume_training(run_dir)
    assert str(caught.value) == (
        f"{run_dir / 'tensorboard'} is not a folder (TensorBoard writes its event files there); move it away, "
        "or drop tensorboard from --report-to"
    )
    assert run_files(run_dir) == before


def test_a_resume_whose_mlflow_store_was_deleted_trains_on_into_a_new_mlflow_run_that_names_the_old(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    run_dir = crashed_run(tmp_path, "lost", ["mlflow"], monkeypatch)
    old_id = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    store = tmp_path / "runs" / "mlflow.db"
    store.unlink()
    warnings = Warnings()
    # Before: "unexpected MlflowException: Run with id=… not found", summary.json left
    # "running", and every later resume failed the same way.
    resume_training(run_dir, warnings)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"] == 1
    new_id = summary["mlflow_run_id"]
    assert new_id != old_id and summary["mlflow_continues_run_id"] == old_id
    assert warnings.lines == [
        f"mlflow: the run's MLflow run {old_id} is not in sqlite:///{store} (the store was deleted or replaced, or "
        f"MLFLOW_TRACKING_URI changed); this resume logs to a new MLflow run {new_id}, tagged "
        f"flood.continues_mlflow_run={old_id}, with the 2 earlier row(s) copied from metrics.csv"
    ]
    client = MlflowClient(f"sqlite:///{store}")
    run = client.get_run(new_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lost"
    assert run.data.tags["flood.continues_mlflow_run"] == old_id and run.data.tags["flood.run_dir"] == str(run_dir)
    assert run.data.params["train.b"] == "0.66"
    for column in ("train_loss", "val_loss"):  # every row: the 2 copied and the 2 resumed ones
        history = sorted((m.step, m.value) for m in client.get_metric_history(new_id, column))
        expected = csv_column(run_dir, column)
        assert [step for step, _ in history] == [step for step, _ in expected] == [6, 12, 18, 24]
        for (_, got), (_, want) in zip(history, expected, strict=True):
            assert got == pytest.approx(want, rel=1e-6)
    assert "tracker_gaps" not in summary


def test_an_mlflow_store_that_fails_mid_run_is_warned_once_and_the_run_completes_saying_which_rows_it_lacks(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch
    calls = {"metrics": 0}

    def server_gone_after_the_first_row(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if metrics:
            calls["metrics"] += 1
            if calls["metrics"] > 1:
                raise MlflowException("API request to http://tracking:5000/api/2.0/mlflow/runs/log-batch failed with exception Connection refused")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", server_gone_after_the_first_row)
    warnings = Warnings()
    # Before: the exception ended the run ("unexpected MlflowException", status failed).
    result = run_training(load_config(config(tmp_path, "midrun", ["mlflow"])), warnings)
    run_dir = result.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    steps = [step for step, _ in csv_column(run_dir, "val_loss")]
    assert steps == [6, 12, 18, 24]
    client = MlflowClient(summary["mlflow_tracking_uri"])
    logged = sorted({m.step for m in client.get_metric_history(summary["mlflow_run_id"], "val_loss")})
    lacking = [step for step in steps if step not in logged]
    assert logged == [6] and lacking == [12, 18, 24]
    error = "MlflowException: API request to http://tracking:5000/api/2.0/mlflow/runs/log-batch failed with exception Connection refused"
    assert summary["tracker_gaps"] == {"mlflow": {"steps": lacking, "error": error}}
    assert warnings.lines == [
        f"mlflow failed at step 12 ({error}); training goes on without it, metrics.csv keeps every row",
        f"mlflow lacks 3 of 4 evaluation row(s), at step(s) 12, 18, 24 ({error}); metrics.csv has every row",
    ]


def test_a_tensorboard_writer_that_fails_mid_run_prints_no_thread_traceback_and_the_run_completes(tmp_path, monkeypatch, capfd):
    import errno

    from tensorboard.summary.writer import record_writer

    real = record_writer.RecordWriter.write
    written = {"n": 0}

    def disk_full_later(self, data):  # in TensorBoard's writer thread
        written["n"] += 1
        if written["n"] > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", disk_full_later)
    warnings = Warnings()
    # Before: the writer thread's traceback ("Exception in thread …"), then the same
    # error raised by the next add_scalar ended the run.
    result = run_training(load_config(config(tmp_path, "tbfull", ["tensorboard"])), warnings)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    gap = summary["tracker_gaps"]["tensorboard"]
    assert gap["error"] == "OSError: [Errno 28] No space left on device"
    steps = [step for step, _ in csv_column(result.run_dir, "val_loss")]
    assert gap["steps"] and gap["steps"] == steps[steps.index(gap["steps"][0]) :]  # from its failure to the end
    assert len(warnings.lines) == 2 and warnings.lines[0].startswith("tensorboard failed at step ")
    assert warnings.lines[1].startswith(f"tensorboard lacks {len(gap['steps'])} of {len(steps)} evaluation row(s)")
    assert "Exception in thread" not in capfd.readouterr().err
