"""Data parallelism through Accelerate, on CPU with two processes (torchrun, gloo):
two processes with batches of 8 must train like one process with batches of 16, and
flooding must decide on the mean loss of the whole step, all processes together."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flood_cli.config import load_config
from flood_cli.runs import TIME_COLUMNS
from flood_cli.train import run_training
from tests.conftest import small_config, write_config

NO_DROPOUT = {"tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}}


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(handle)]


@pytest.mark.timeout(300)
def test_two_processes_train_like_one_process_with_the_combined_batch(tmp_path):
    flooding = {"mode": "flooding", "b": 0.64}
    single = small_config(model=NO_DROPOUT, train={**flooding, "batch_size": 16}, output={"dir": str(tmp_path / "runs"), "name": "single"})
    reference = run_training(load_config(write_config(tmp_path, single, "single.yaml")))

    parallel = small_config(model=NO_DROPOUT, train={**flooding, "batch_size": 8}, output={"dir": str(tmp_path / "runs"), "name": "ddp"})
    config = write_config(tmp_path, parallel, "ddp.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "flood_cli", "train", "-c", str(config), "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    assert result.stdout.splitlines()[0] == f"run folder: {run_dir}"  # reported once, by the main process
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["meta"]["num_processes"] == 2

    rows, expected = read_rows(run_dir), read_rows(reference.run_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    assert 0.0 < float(expected[0]["flood_active"]) < 1.0, "b should flood some steps and not others"
    for got, want in zip(rows, expected):
        assert got["flood_active"] == want["flood_active"]
        for column in ("train_loss", "train_objective", "train_accuracy", "val_loss", "val_accuracy"):
            assert float(got[column]) == pytest.approx(float(want[column]), rel=1e-4, abs=1e-6), column
