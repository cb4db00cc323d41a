"""Data parallelism on CPU with two processes (gloo), on ragged sizes.

Two processes with batches of 8 must train like one process with batches of 16: the
same steps, each step's gradient that of its mean loss however unevenly it is shared
out, flooding deciding on the mean loss of the whole step, every evaluation scoring
each example once. Stopping (SIGKILL of both, SIGTERM of one) and skipping non-finite
steps must keep the processes in step.

The processes are started by hand (the environment torchrun sets), so that a test can
signal one of them and read each one's exit code; one test goes through torchrun
(--standalone). They meet at a TCPStore the test process hosts on a port it holds
from before they start (see start_ranks), and a failure or hang shows every rank's stderr.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flood_cli.config.load import load_config
from flood_cli.runs.columns import TIME_COLUMNS
from flood_cli.train.entry import run_training
from tests import oracle
from tests.conftest import ROOT, SHIPPED_DATA, csv_bytes_without_time, small_config, write_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

NO_DROPOUT = {"tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}}
FLOODING = {"mode": "flooding", "b": 0.68}


@pytest.fixture(scope="module")
def ragged(tmp_path_factory) -> dict[str, Path]:
    """97 training examples: with 2 processes × 8 the last step of an epoch holds one
    example, so one process has none of it. 37 validation examples in evaluation
    batches of 16 (16, 16, 5): one process scores two batches, the other one."""
    folder = tmp_path_factory.mktemp("ragged")
    examples = oracle.read_examples(SHIPPED_DATA)
    parts = {"train": examples[:97], "validation": examples[100:137], "test": examples[137:160]}
    return {role: oracle.write_examples(folder / f"{role}.csv", part) for role, part in parts.items()}


def config_for(tmp_path: Path, files: dict[str, Path], name: str, batch_size: int, **sections) -> Path:
    config = small_config(**{"model": NO_DROPOUT, **sections})
    config["data"].update(
        train_file=str(files["train"]), validation_file=str(files["validation"]), test_file=str(files["test"]),
        max_train_examples=None, max_val_examples=None,
    )
    config["train"].update(batch_size=batch_size, eval_batch_size=16)
    config["output"].update(dir=str(tmp_path / "runs"), name=name)
    return write_config(tmp_path, config, f"{name}.yaml")


def rendezvous_store():
    """A TCPStore this test process hosts for the ranks to meet at: bound to a port the
    OS picks (port 0) at once and held until the store is dropped, so no other program
    can take the port between choosing it and using it (picking a free port, releasing
    it and having rank 0 bind it seconds later lost the port on a loaded machine)."""
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


def start_ranks(args: list[str], world: int = 2, python_code: str | None = None) -> list[subprocess.Popen]:
    """`flood train ARGS` in ``world`` processes, with the variables torchrun sets.

    They meet at a store this process hosts (``rendezvous_store``; each process keeps a
    reference to it as ``.rendezvous_store``): TORCHELASTIC_USE_AGENT_STORE=True makes
    torch's env:// rendezvous (``_create_c10d_store``) connect every rank, rank 0 too, as
    a client to MASTER_ADDR:MASTER_PORT instead of having rank 0 bind it, as under
    torchrun, whose agent hosts the store. Accelerate reads neither variable; torch
    puts the process group's keys under the prefix "default_pg/", and each call has a
    store of its own, so runs never share keys."""
    store = rendezvous_store()
    processes = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world), "PYTHONPATH": str(ROOT),
            "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0",
            "OMP_NUM_THREADS": "1",
        }
        entry = ["-c", python_code] if python_code else ["-m", "flood_cli"]
        process = subprocess.Popen(
            [sys.executable, *entry, "train", "-q", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        process.rendezvous_store = store  # held as long as the processes are
        processes.append(process)
    return processes


def stderr_tails(results: list[tuple[int | None, str, str]], chars: int = 3000) -> str:
    """Every rank's exit code and the end of its stderr, for an assertion message."""
    return "\n".join(f"--- rank {rank} (exit code {code}) stderr:\n{(err or '')[-chars:]}" for rank, (code, _, err) in enumerate(results))


def _collect(processes: list[subprocess.Popen], deadline: float, grace: float) -> tuple[list[tuple[int | None, str, str]], str]:
    """Wait for every process, reading their pipes meanwhile. Once one has failed, the
    others get ``grace`` seconds (they may be waiting for it forever), then are killed;
    at ``deadline`` all are. Returns each (code, stdout, stderr) and why any were killed."""
    import threading

    outputs: list[tuple[str, str]] = [("", "")] * len(processes)

    def read(index: int) -> None:
        outputs[index] = processes[index].communicate()

    readers = [threading.Thread(target=read, args=(index,), daemon=True) for index in range(len(processes))]
    for reader in readers:
        reader.start()
    killed, failed_at = "", None
    while any(reader.is_alive() for reader in readers):
        now = time.time()
        codes = [process.poll() for process in processes]
        if failed_at is None and any(code not in (None, 0) for code in codes):
            failed_at = now
        if now >= deadline:
            killed = "the processes did not finish in time (a hang between ranks?); killed"
        elif failed_at is not None and now - failed_at >= grace:
            killed = f"a rank failed and the others were still running {grace:g} s later (waiting for it?); killed"
        if killed:
            for process in processes:
                if process.poll() is None:
                    process.kill()
            break
        time.sleep(0.05)
    for reader in readers:
        reader.join()
    return [(process.returncode, *outputs[index]) for index, process in enumerate(processes)], killed


def finish(processes: list[subprocess.Popen], timeout: float = 240, grace: float = 60) -> list[tuple[int, str, str]]:
    """Each process's (exit code, stdout, stderr). A hang (past ``timeout``, or ``grace``
    seconds after another rank failed) kills them all and fails with every rank's stderr."""
    results, killed = _collect(processes, time.time() + timeout, grace)
    if killed:
        raise AssertionError(f"{killed}\n{stderr_tails(results)}")
    return results


def run_ranks(args: list[str], **kwargs) -> list[tuple[int, str, str]]:
    results = finish(start_ranks(args, **kwargs))
    assert all(code == 0 for code, _, _ in results), f"a rank failed\n{stderr_tails(results)}"
    return results


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(handle)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wait_for_step(run_dir: Path, processes: list[subprocess.Popen], at_least: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in processes):
            results, _ = _collect(processes, time.time() + 30, grace=5)
            raise AssertionError(f"a process ended before it could be stopped\n{stderr_tails(results)}")
        try:
            if summary(run_dir).get("steps_completed", 0) >= at_least:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    results, _ = _collect(processes, time.time(), grace=0)  # kills them
    raise AssertionError(f"the run did not get to step {at_least} in {timeout:g} s\n{stderr_tails(results)}")


RENDEZVOUS_CHECK = """
import os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(total)
print(os.environ["MASTER_PORT"], float(total))
dist.destroy_process_group()
"""


def listening_ports() -> set[int]:
    import psutil

    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


@pytest.mark.timeout(200)
def test_the_ranks_meet_at_a_port_this_process_holds_before_they_start_and_after():
    """The rendezvous port cannot be stolen: the test process is listening on it when the
    ranks start (it is never released for rank 0 to bind), and the ranks meet through it."""
    before = listening_ports()
    processes = start_ranks([], python_code=RENDEZVOUS_CHECK)
    held = listening_ports() - before
    assert len(held) == 1, f"the test process should hold the rendezvous port before the ranks start; it listens on {held}"
    results = finish(processes, timeout=150)
    assert [code for code, _, _ in results] == [0, 0], stderr_tails(results)
    port = held.pop()
    assert [out.split() for _, out, _ in results] == [[str(port), "3.0"]] * 2  # all_reduce of 1 + 2
    assert port in listening_ports()  # still held by this process, not by a rank


STUCK_OR_FAILING = """
import os, sys, time
rank = os.environ["RANK"]
print(f"rank {rank} started, pid {os.getpid()}", file=sys.stderr, flush=True)
if rank == sys.argv[-1]:
    sys.exit(f"rank {rank} fails here")
time.sleep(600)
"""


@pytest.mark.parametrize(
    "failing, limits, why",
    [
        ("1", {"timeout": 15}, "did not finish in time"),
        ("1", {"timeout": 120, "grace": 2}, "a rank failed and the others were still running 2 s later"),
        ("none", {"timeout": 8}, "did not finish in time"),
    ],
    ids=["a rank fails, the other waits for it: time-out", "the same: grace after a failure", "both hang"],
)
def test_a_failing_or_hanging_rank_is_reported_with_every_ranks_stderr(failing, limits, why):
    """One rank exits non-zero while the other waits for it forever, or both hang: the
    harness kills them (time-out, or grace after a failure) and its message holds both
    ranks' stderr."""
    processes = start_ranks([failing], python_code=STUCK_OR_FAILING)
    started = time.time()
    with pytest.raises(AssertionError) as caught:
        finish(processes, **limits)
    assert time.time() - started < 60
    message = str(caught.value)
    assert all(process.poll() is not None for process in processes)  # none left running
    assert why in message
    assert f"rank 0 started, pid {processes[0].pid}" in message and f"rank 1 started, pid {processes[1].pid}" in message
    if failing == "1":
        assert "rank 1 fails here" in message and "rank 1 (exit code 1)" in message


def test_a_rank_exiting_non_zero_fails_run_ranks_with_every_ranks_stderr():
    """Rank 1 exits 1, rank 0 exits 0: the message shows rank 0's stderr as well (what
    it was doing when its partner failed may be the clue)."""
    quick = STUCK_OR_FAILING.replace("time.sleep(600)", 'print(f"rank {rank} done", file=sys.stderr)')
    with pytest.raises(AssertionError) as caught:
        run_ranks(["1"], python_code=quick)
    message = str(caught.value)
    assert "rank 0 (exit code 0)" in message and "rank 0 done" in message
    assert "rank 1 (exit code 1)" in message and "rank 1 fails here" in message


@pytest.mark.timeout(400)
def test_two_processes_train_like_one_with_the_combined_batch_on_ragged_sizes(tmp_path, ragged):
    """Flooding, 97 / 37 / 23 examples, a checkpoint and best model: the CSV equals the
    single-process run's, and best_model scores best_val_loss under the oracle."""
    common = {"output": {"save_best_model": True}, "train": {**FLOODING, "eval_every": 4}}
    reference = run_training(load_config(config_for(tmp_path, ragged, "single", 16, **common)))
    run_ranks(["-c", str(config_for(tmp_path, ragged, "ddp", 8, **common))])
    run_dir = tmp_path / "runs" / "ddp"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["meta"]["num_processes"] == 2

    got, want = rows(run_dir), rows(reference.run_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want] == ["4", "8", "12", "14"]  # 7 steps per epoch
    assert 0.0 < sum(float(r["flood_active"]) for r in want) < len(want), "b should flood some steps and not others"
    for a, b in zip(got, want, strict=True):
        assert a["flood_active"] == b["flood_active"]
        assert a["val_accuracy"] == b["val_accuracy"] and a["test_accuracy"] == b["test_accuracy"]
        for column in ("train_loss", "train_objective", "train_accuracy", "val_loss", "val_loss_top10_share", "test_loss"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4, abs=1e-6), column

    truth = oracle.figures(
        oracle.load_model(folder=run_dir / "best_model"), oracle.load_tokenizer(run_dir / "best_model"),
        oracle.read_examples(ragged["validation"]), 48,
    )
    assert summary(run_dir)["best_val_loss"] == pytest.approx(truth.loss, rel=1e-4)


def test_two_processes_compute_the_optional_metrics_of_one(tmp_path, ragged):
    """train.metrics, all five, on 37 validation examples in batches of 16 shared out
    unevenly (and 23 test examples): the columns equal the single-process run's."""
    names = ["f1_macro", "f1_weighted", "auroc", "auprc", "mcc"]
    common = {"train": {"lr": 1e-3, "epochs": 1, "eval_every": 4, "metrics": names}}
    reference = run_training(load_config(config_for(tmp_path, ragged, "single", 16, **common)))
    run_ranks(["-c", str(config_for(tmp_path, ragged, "ddp", 8, **common))])
    got, want = rows(tmp_path / "runs" / "ddp"), rows(reference.run_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want] == ["4", "7"]
    for a, b in zip(got, want, strict=True):
        for column in [f"{split}_{name}" for split in ("val", "test") for name in names]:
            assert float(a[column]) == pytest.approx(float(b[column]), abs=1e-6), column


@pytest.mark.timeout(400)
def test_torchrun_launches_a_run_reported_once(tmp_path, ragged):
    config = config_for(tmp_path, ragged, "torchrun", 8, train={"epochs": 1})
    taken = socket.socket()  # torchrun's default port, taken (if no other program has it already)
    try:
        taken.bind(("", 29500))
        taken.listen()
    except OSError:
        pass
    # --standalone: the agent hosts the rendezvous store on a port it binds at once
    # (localhost:0, torch/distributed/run.py) and the workers connect to it. torch 2.13
    # does so on one node without the flag too, unless --master-port is given; older
    # versions bound the fixed port 29500, which another run may hold (taken above).
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "flood_cli", "train", "-c", str(config), "-q",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"torchrun did not finish in 300 s (a hang between ranks?); both ranks' stderr:\n{err[-6000:]}") from None
    finally:
        taken.close()
    assert result.returncode == 0, result.stderr[-6000:]  # torchrun passes on both ranks' stderr
    run_dir = tmp_path / "runs" / "torchrun"
    lines = result.stdout.splitlines()
    # by the main process only: the thread line (a CPU run's), then the run folder, once each
    assert lines[:2] == ["CPU: 1 thread (OMP_NUM_THREADS=1)", f"run folder: {run_dir}"], lines
    assert sum(line.startswith(("CPU:", "run folder:")) for line in lines) == 2, lines
    assert summary(run_dir)["status"] == "completed"


@pytest.mark.timeout(500)
def test_sigkill_of_both_processes_mid_epoch_then_resume_gives_the_same_csv_bytes(tmp_path, ragged):
    """Dropout on, so that each process's own RNG must come back on resume."""
    sections = {"model": {"tiny": {**NO_DROPOUT["tiny"], "dropout": 0.1}}, "train": {"epochs": 3, **FLOODING}}
    run_ranks(["-c", str(config_for(tmp_path, ragged, "reference", 8, **sections))])

    killed = tmp_path / "runs" / "killed"
    processes = start_ranks(["-c", str(config_for(tmp_path, ragged, "killed", 8, output={"checkpoint_every": 3}, **sections))])
    wait_for_step(killed, processes, at_least=10)  # mid epoch 2 (7 steps per epoch)
    for process in processes:
        process.send_signal(signal.SIGKILL)
    finish(processes)
    assert summary(killed)["status"] == "running"
    assert 1 <= len(rows(killed)) < 3

    run_ranks(["--resume", str(killed)])
    assert csv_bytes_without_time(killed) == csv_bytes_without_time(tmp_path / "runs" / "reference")
    assert summary(killed)["status"] == "completed"


@pytest.mark.timeout(400)
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_one_checkpoint(tmp_path, ragged):
    stopped = tmp_path / "runs" / "stopped"
    sections = {"train": {"epochs": 30}, "data": {"max_length": 24}}
    processes = start_ranks(["-c", str(config_for(tmp_path, ragged, "stopped", 8, **sections))])
    wait_for_step(stopped, processes, at_least=9)
    processes[1].send_signal(signal.SIGTERM)  # the process that does not write the run folder
    results = finish(processes, timeout=120)
    assert [code for code, _, _ in results] == [130, 130], [err[-2000:] for _, _, err in results]
    main_lines = results[0][2].strip().splitlines()
    assert main_lines[-2].startswith("interrupted: stopped by SIGTERM at step ")
    assert main_lines[-1] == f"resume with: flood train --resume {stopped}"
    assert results[1][2].strip() == ""  # one report, from the main process
    step = int(main_lines[-2].split("at step ")[1].split(";")[0])
    state = summary(stopped)
    assert state["status"] == "interrupted" and state["checkpoint_step"] == step
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == ["last.pt"]

    # The checkpoint resumes with both processes, and with one only it is refused.
    single = subprocess.run([sys.executable, "-m", "flood_cli", "train", "--resume", str(stopped)], capture_output=True, text=True, cwd=ROOT)
    assert single.returncode == 1
    assert single.stderr.strip() == (
        f"error: run {stopped} was trained by 2 process(es), this resume has 1; "
        "resume it with 2 (batch_size is per process, so the steps would differ)"
    )


NAN_ON_RANK_1 = """
import sys, torch
import flood_cli.train.loop as train
from flood_cli.cli.main import main

rank = int(__import__("os").environ["RANK"])
marker = sys.argv[-1]
real = train.step_loss_sum
calls = {"n": 0}

def poisoned(logits, labels):
    calls["n"] += 1
    loss = real(logits, labels)
    return loss * float("nan") if rank == 1 and calls["n"] in (3, 4, 9) else loss

train.step_loss_sum = poisoned
real_fit = train.Trainer.fit

def fit(self):
    result = real_fit(self)
    checksum = sum(float(p.double().sum()) for p in self.raw_model.parameters())
    open(marker + f".rank{rank}", "w").write(repr(checksum))
    return result

train.Trainer.fit = fit
sys.argv = ["flood"] + sys.argv[1:-1]
main()
"""


@pytest.mark.timeout(400)
def test_a_nonfinite_loss_on_one_process_is_skipped_by_every_process(tmp_path, ragged):
    config = config_for(tmp_path, ragged, "skip", 8, train={"on_nonfinite": "skip", "epochs": 2})
    marker = tmp_path / "weights"
    results = run_ranks(["-c", str(config), str(marker)], python_code=NAN_ON_RANK_1)
    logged = rows(tmp_path / "runs" / "skip")
    print("\n".join(err[-2000:] for _, _, err in results))  # shown by pytest if an assertion below fails
    assert sum(int(r["skipped_steps"]) for r in logged) == 3, logged
    checksums = [(tmp_path / f"weights.rank{rank}").read_text() for rank in (0, 1)]
    assert checksums[0] == checksums[1], f"the processes' models drifted apart: {checksums}"


@pytest.mark.timeout(400)
def test_early_stopping_stops_both_processes_at_the_step_one_process_stops_at(tmp_path, ragged):
    """Both ranks read the same (reduced) val_loss, so both decide to stop after the same
    evaluation: neither is left waiting in an all-reduce, both exit 0, and the stop step
    is the single-process run's. lr 1e-3 overfits the 97 examples within 3 epochs."""
    common = {"train": {"epochs": 3, "lr": 1e-3, "eval_every": 2, "early_stopping": {"patience": 2}}}
    reference = run_training(load_config(config_for(tmp_path, ragged, "single", 16, **common)))
    assert reference.stopped_at_step is not None and reference.stopped_at_step < 21  # 7 steps per epoch
    results = run_ranks(["-c", str(config_for(tmp_path, ragged, "ddp", 8, **common))])
    run_dir = tmp_path / "runs" / "ddp"
    final = summary(run_dir)
    assert (final["status"], final["stopped_early"], final["stopped_at_step"]) == ("completed", True, reference.stopped_at_step)
    assert [r["step"] for r in rows(run_dir)] == [r["step"] for r in rows(reference.run_dir)]
    said = [line for _, out, _ in results for line in out.splitlines() if line.startswith("stopped early at step")]
    assert said == [f"stopped early at step {reference.stopped_at_step}: val_loss did not improve for 2 evaluations (train.early_stopping)"]
