"""`flood sweep` and signals: Ctrl-C in a terminal stops every worker after its step with
a checkpoint (one SIGTERM each from the sweep, never the terminal's SIGINT too), a second
Ctrl-C stops them at once; sweep names are plain folder names; sweep.yaml is staged in a
file of its own; a storage password is never stored nor printed; a database server that
never answers fails within a bounded time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from flood_cli.core.errors import FloodError
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import driver as sweep_driver
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from tests.conftest import ROOT, small_config, write_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _wait(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _summary(run: Path) -> dict:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def test_ctrl_c_in_a_terminal_stops_every_worker_after_its_step_with_a_checkpoint(tmp_path):
    """SIGINT to the sweep's whole process group, as a terminal sends it, while two
    workers are mid-run before their first evaluation: exit 130 with a resume line; each
    run stopped cleanly after a step (summary "stopped by SIGTERM", checkpoint kept: one
    signal reached it, not the terminal's and the sweep's); each worker log ends in one
    "interrupted" line; --resume then completes both runs from their checkpoints."""
    config = small_config(train={"epochs": 1, "batch_size": 4}, output={"checkpoint_every": 20})
    config["data"].update(max_train_examples=960, max_val_examples=24, max_length=24)  # 240 steps, evaluated at the end
    base = write_config(tmp_path, config, "base.yaml")
    folder = tmp_path / "sweeps" / "sig"
    command = [sys.executable, "-m", "flood_cli", "sweep", "-c", str(base), "--b", "0.5", "--seeds", "1",
               "--workers", "2", "--out", str(tmp_path / "sweeps"), "--name", "sig"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def both_training() -> bool:
            runs = list((folder / "runs").glob("*")) if (folder / "runs").exists() else []
            return len(runs) == 2 and all((run / "checkpoints" / "last.pt").exists() and _summary(run).get("status") == "running" for run in runs)

        _wait(both_training, what="two runs past their first checkpoint")
        os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: its whole foreground group
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    assert f"resume with: flood sweep --resume {folder}" in stderr, stderr[-3000:]
    assert "no usable runs" not in stderr
    runs = sorted((folder / "runs").iterdir())
    assert [run.name for run in runs] == ["baseline-s1", "flooding-b0.5-s1"]
    for run in runs:
        summary = _summary(run)
        assert (summary["status"], summary["error"]) == ("interrupted", "stopped by SIGTERM"), (run.name, summary)
        assert (run / "checkpoints" / "last.pt").exists()
    logs = sorted((folder / "workers").glob("worker-*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "unexpected" not in text and "Traceback" not in text, text[-2000:]
        lines = [line for line in text.splitlines() if line.startswith("interrupted:")]
        assert len(lines) == 1 and "checkpoint written" in lines[0] and "queued again" in lines[0], text[-2000:]

    result = subprocess.run([sys.executable, "-m", "flood_cli", "sweep", "--resume", str(folder)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for run in runs:
        summary = _summary(run)
        assert summary["status"] == "completed" and summary["resumed"] == 1, (run.name, summary)


FAKE_WORKER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: open(sys.argv[1], "a").write("TERM\\n"))
open(sys.argv[1], "a").write("ready\\n")
while True:
    time.sleep(0.1)
"""


def test_a_second_ctrl_c_while_the_workers_stop_kills_them_at_once(tmp_path):
    """Workers that take long to stop after their SIGTERM: a second Ctrl-C (a
    KeyboardInterrupt in the sweep) kills them at once instead of waiting, and says so."""
    # Python leaves SIGINT ignored in a process started in the background by a shell
    # without job control (`cmd &` in a script): give it the terminal's default here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    marks = [tmp_path / f"w{i}" for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-c", FAKE_WORKER, str(mark)], start_new_session=True) for mark in marks]
    try:
        _wait(lambda: all(mark.exists() for mark in marks), 60, "fake workers")
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.time()
        try:
            killed = sweep_driver.stop_workers(workers, timeout=120)
        except KeyboardInterrupt:
            killed = "the second Ctrl-C escaped stop_workers"
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert killed is True and time.time() - started < 30
    assert [worker.returncode for worker in workers] == [-signal.SIGKILL] * 2
    assert [mark.read_text().split() for mark in marks] == [["ready", "TERM"]] * 2  # one SIGTERM each, then SIGKILL


def test_sweep_names_are_plain_folder_names(tmp_path):
    """--name ../x would put the sweep outside --out; a line break would break every
    line that prints it: both refused in one line before anything is created."""
    base = write_config(tmp_path, small_config(), "base.yaml")
    out = tmp_path / "sweeps"
    out.mkdir()
    for name in ("../x", "a\nb", "..", "a/b"):
        with pytest.raises(FloodError) as caught:
            sweep_create.create_sweep(base, None, {"train.b": [0.1]}, [1], [], 0, out, name, None, None)
        message = str(caught.value)
        assert message.startswith("--name ") and "plain folder name" in message and "\n" not in message, message
    assert list(out.iterdir()) == [] and not (tmp_path / "x").exists()


def test_sweep_yaml_is_staged_in_a_file_no_other_writer_shares(tmp_path):
    """Two `--resume --settings` at once each stage sweep.yaml: a fixed temporary name
    would let one overwrite, then rename away, the other's staged file."""
    spec = sweep_spec.SweepSpec(name="s", folder=str(tmp_path), base={}, mode="flooding", settings=[], seeds=[1])
    other = tmp_path / f".{sweep_spec.SPEC_FILE}.tmp"  # the file another writer is staging
    other.write_text("the other writer's sweep.yaml")
    sweep_spec._write_spec(spec)
    assert other.read_text() == "the other writer's sweep.yaml"
    assert yaml.safe_load((tmp_path / sweep_spec.SPEC_FILE).read_text())["name"] == "s"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, sweep_spec.SPEC_FILE])


# ---------------------------------------------------------------------------
# Storage URLs: passwords and a server that never answers


def test_a_storage_password_is_never_printed(tmp_path):
    with socket.socket() as sock:  # a free port: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://flood:s3cr%40t-pw@127.0.0.1:{port}/sweeps"
    with pytest.raises(FloodError) as caught:
        sweep_storage.open_storage(url)
    message = str(caught.value)
    assert "s3cr" not in message and f"postgresql://flood@127.0.0.1:{port}/sweeps" in message, message
    assert sweep_storage.split_password(url) == (f"postgresql://flood@127.0.0.1:{port}/sweeps", "s3cr@t-pw")
    assert sweep_storage.split_password("postgresql://u@h/db?password=pw&sslmode=require") == ("postgresql://u@h/db?sslmode=require", "pw")
    assert sweep_storage.split_password("postgresql://u@h:5432/db") == ("postgresql://u@h:5432/db", None)


def test_a_server_that_accepts_and_never_answers_fails_in_bounded_time(tmp_path, monkeypatch):
    """A PostgreSQL URL whose server accepts the connection and never answers: one line
    within the connect timeout, not a wait without end."""
    monkeypatch.setattr(sweep_storage, "CONNECT_TIMEOUT_S", 2, raising=False)  # libpq's least
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in range(4)), daemon=True).start()
    outcome: dict = {}

    def connect() -> None:
        try:
            sweep_storage.open_storage(f"postgresql://flood:pw@127.0.0.1:{port}/sweeps")
        except FloodError as exc:
            outcome["error"] = str(exc)

    started = time.time()
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(60)
    try:
        assert not thread.is_alive(), "open_storage still waits for a server that never answers"
        assert time.time() - started < 30
        assert accepted, "the client never reached the server"
        assert outcome["error"].startswith(f"cannot open the storage postgresql://flood@127.0.0.1:{port}/sweeps: ")
        assert "\n" not in outcome["error"] and ":pw@" not in outcome["error"]
    finally:
        for connection, _ in accepted:
            connection.close()
        server.close()




def test_a_storage_password_is_stored_nowhere_and_given_to_the_workers_in_their_environment(tmp_path, postgres):  # noqa: F811
    base = write_config(tmp_path, small_config(), "base.yaml")
    host_part = postgres.split("://", 1)[1]  # flood@127.0.0.1:PORT/sweeps
    url = "postgresql://" + host_part.replace("flood@", "flood:s3cret-pw@", 1)
    spec = sweep_create.create_sweep(base, None, {"train.b": [0.1]}, [1], [], 0, tmp_path / "sweeps", "pw", url, "pw-study")
    assert spec.storage == postgres
    assert "s3cret" not in (Path(spec.folder) / sweep_spec.SPEC_FILE).read_text()
    study = sweep_storage.load_study(sweep_storage.open_storage(postgres), "pw-study")
    assert "s3cret" not in json.dumps(study.user_attrs) and study.user_attrs["flood_sweep"]["storage"] == postgres
    assert sweep_storage.worker_env(spec.storage) == {sweep_storage.PASSWORD_ENV: "s3cret-pw"}
    assert sweep_create.spec_from_study(url, "pw-study").storage == postgres
