"""The per-example modes on two processes (gloo, CPU), on ragged sizes: iFlood's
flood_active counts each example once however the last step is shared out, and
AdaFlood's auxiliary runs, not yet cached, are trained by both processes together and
give the levels one process gives with the combined batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flood_cli.config.load import load_config
from flood_cli.train import adaflood
from flood_cli.train.entry import run_training
from tests.train.test_distributed import config_for, ragged, rows, run_ranks, summary  # noqa: F401 (ragged: a fixture)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FLOAT_COLUMNS = ("train_loss", "train_objective", "train_accuracy", "val_loss", "test_loss")


def assert_rows_match(got: list[dict[str, str]], want: list[dict[str, str]]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["val_accuracy"] == b["val_accuracy"] and a["test_accuracy"] == b["test_accuracy"]
        for column in FLOAT_COLUMNS:
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4, abs=1e-6), column


@pytest.mark.timeout(400)
def test_iflood_on_two_processes_counts_the_placeholder_example_nowhere(tmp_path, ragged):
    """b = 100: every example ascends, so flood_active is 1 in every row. 97 examples in
    steps of 2 × 8: the last step holds one example, and the process without it runs a
    zero-weighted placeholder, which counted as ascending (8/7 = 1.1428571 logged)."""
    common = {"train": {"mode": "iflood", "b": 100.0, "eval_every": 4}}
    reference = run_training(load_config(config_for(tmp_path, ragged, "single", 16, **common)))
    run_ranks(["-c", str(config_for(tmp_path, ragged, "ddp", 8, **common))])
    got, want = rows(tmp_path / "runs" / "ddp"), rows(reference.run_dir)
    assert [r["step"] for r in got] == ["4", "8", "12", "14"]
    assert [float(r["flood_active"]) for r in got] == [float(r["flood_active"]) for r in want] == [1.0] * 4
    assert_rows_match(got, want)


@pytest.mark.timeout(500)
def test_adaflood_on_two_processes_trains_its_auxiliary_runs_together(tmp_path, ragged):
    """Nothing cached: both processes train each of the 2 auxiliary runs together (it
    deadlocked: the process holding the cache's lock waited in its first run for the
    other, which waited on the lock), the held-out losses equal one process's with the
    combined batch, and so does the main run's CSV. A second launch reuses them."""
    def config(name: str, batch: int) -> Path:
        return config_for(
            tmp_path / name, ragged, name, batch,
            train={"mode": "adaflood", "adaflood": {"gamma": 0.5, "folds": 2}, "eval_every": 7},
        )

    (tmp_path / "single").mkdir()
    (tmp_path / "ddp").mkdir()
    reference = run_training(load_config(config("single", 16)))
    results = run_ranks(["-c", str(config("ddp", 8))])
    cfg = load_config(config("ddp", 8))
    folder = Path(cfg.output.dir) / adaflood.CACHE_DIR / adaflood.cache_key(cfg)
    single_cfg = load_config(config("single", 16))
    single_folder = Path(single_cfg.output.dir) / adaflood.CACHE_DIR / adaflood.cache_key(single_cfg)
    for fold in range(2):
        assert summary(folder / f"fold-{fold}")["status"] == "completed"
        meta = __import__("yaml").safe_load((folder / f"fold-{fold}" / "config.yaml").read_text())["meta"]
        assert meta["num_processes"] == 2
    torch.testing.assert_close(
        torch.load(folder / adaflood.LOSSES_FILE, weights_only=True),
        torch.load(single_folder / adaflood.LOSSES_FILE, weights_only=True),
        rtol=1e-4, atol=1e-6,
    )
    assert_rows_match(rows(tmp_path / "ddp" / "runs" / "ddp"), rows(reference.run_dir))
    rank0_err = results[0][2]
    assert "adaflood: training auxiliary run 1 of 2" in rank0_err and "adaflood: training auxiliary run 2 of 2" in rank0_err

    cfg_again = config_for(
        tmp_path / "ddp", ragged, "again", 8, train={"mode": "adaflood", "adaflood": {"gamma": 0.5, "folds": 2}, "eval_every": 7}
    )
    again = run_ranks(["-c", str(cfg_again)])
    assert f"adaflood: reusing the held-out losses of 2 auxiliary runs in {folder}" in again[0][2]
    assert "training auxiliary run" not in again[0][2] + again[1][2]
