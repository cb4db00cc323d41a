"""`flood sweep --b auto[:0.5,1,2]`: the baseline first, then flood levels at multiples of
its train loss at its best evaluation (mean over seeds), stored once in sweep.yaml."""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from flood_cli.core.errors import FloodError
from flood_cli.sweep import auto_b
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import driver as sweep_driver
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import storage as sweep_storage
from flood_cli.sweep import worker as sweep_worker
from tests.conftest import ROOT, small_config, write_config
from tests.sweep.test_sweep_recovery import fake, fake_training, trained  # noqa: F401

# ---------------------------------------------------------------------------
# Parsing and refusals (no training)


def test_auto_b_is_parsed_into_multipliers():
    assert auto_b.parse_auto_b("auto") == [0.5, 1.0, 2.0]
    assert auto_b.parse_auto_b("auto:0.25, 1,4") == [0.25, 1.0, 4.0]
    assert auto_b.parse_auto_b("0.05,0.1") is None and auto_b.parse_auto_b(None) is None
    for text, message in [
        ("auto:x", "--b 'auto:x' has 'x', not a number; give positive multipliers of the baseline's train loss, e.g. --b auto or --b auto:0.5,1,2"),
        ("auto:", "--b 'auto:' has an empty multiplier; give positive multipliers of the baseline's train loss, e.g. --b auto or --b auto:0.5,1,2"),
        ("auto:1,-2", "--b 'auto:1,-2': multiplier -2 is not above 0; give positive multipliers, e.g. --b auto or --b auto:0.5,1,2"),
        ("auto:1,1.0", "--b 'auto:1,1.0' repeats the multiplier 1.0; give each multiplier once"),
        ("0.1,auto", "--b '0.1,auto' mixes auto with flood levels; give either --b auto[:MULTIPLIERS] (e.g. --b auto or --b auto:0.5,1,2) or flood levels (--b 0.05,0.1)"),
        ("auto,0.1", "--b 'auto,0.1' mixes auto with flood levels; give either --b auto[:MULTIPLIERS] (e.g. --b auto or --b auto:0.5,1,2) or flood levels (--b 0.05,0.1)"),
    ]:
        with pytest.raises(FloodError) as caught:
            auto_b.parse_auto_b(text)
        assert str(caught.value) == message


def tiny_config(tmp_path: Path) -> Path:
    config = small_config(train={"epochs": 1, "batch_size": 8})
    config["data"].update(max_train_examples=48, max_val_examples=24, max_length=24)
    return write_config(tmp_path, config, "base.yaml")


def flood(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flood_cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_bad_auto_b_exits_2_in_one_line_and_leaves_no_sweep_folder(tmp_path):
    base, out = str(tiny_config(tmp_path)), str(tmp_path / "sweeps")
    for args, code, message in [
        (["--b", "auto:x"], 2, "error: --b 'auto:x' has 'x', not a number; give positive multipliers"),
        (["--b", "auto:"], 2, "error: --b 'auto:' has an empty multiplier;"),
        (["--b", "auto:-1"], 2, "error: --b 'auto:-1': multiplier -1 is not above 0;"),
        (["--b", "auto,0.1"], 2, "error: --b 'auto,0.1' mixes auto with flood levels;"),
        (["--b", "auto", "--mode", "alternate"], 2,
         "error: --b auto places flood levels, which mode alternate has none of; pass --mode flooding or --mode iflood"),
        (["--b", "auto", "--lr", "1e-3,2e-3"], 1,
         "error: --b auto places the flood levels from one baseline, so train.lr takes one value here;"),
    ]:
        result = flood("sweep", "-c", base, "--out", out, *args)
        assert result.returncode == code, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "sweeps").exists() or list((tmp_path / "sweeps").iterdir()) == []


def test_an_auto_b_sweep_starts_with_the_baseline_and_counts_the_runs_to_come(tmp_path):
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1, 2], [], 0, tmp_path, "sw", None, None, b_auto=[0.5, 2.0])
    assert spec.settings == [{"train.mode": "baseline"}] and spec.mode == "flooding" and spec.expected_runs == 6
    assert spec.describe() == (
        "1 setting(s) (baseline) + flooding at 0.5, 2 x the baseline's train loss at its best evaluation "
        "(2 setting(s), placed once the baseline is done) × 2 seed(s) = 6 runs"
    )
    assert sweep_create.read_spec(Path(spec.folder)).b_auto == {"multipliers": [0.5, 2.0]}


# ---------------------------------------------------------------------------
# The two phases, with training faked (runs of no time)

# metrics.csv of a fake baseline run: the lowest val_loss twice (the first counts, as in compare).
def _metrics(seed: int) -> str:
    return (
        "step,epoch,train_loss,val_loss\n"
        f"5,0.5,{0.3 + seed / 100},0.9\n"
        f"10,1,{0.2 + seed / 100},0.5\n"
        f"15,1.5,{0.1 + seed / 100},0.5\n"
        f"20,2,{0.05 + seed / 100},\n"
    )


def _with_metrics(fake_training: Path, interrupt: Path | None = None, fail: BaseException | None = None) -> None:
    """The fake training of test_sweep_recovery, each run also writing a metrics.csv."""
    fake.install(str(fake_training), str(interrupt) if interrupt else None, fail)
    entry = sys.modules["flood_cli.train.entry"]
    run_training = entry.run_training

    def with_metrics(config, reporter):
        run_training(config, reporter)
        (Path(config.output.dir) / config.output.name / "metrics.csv").write_text(_metrics(config.train.seed))

    entry.run_training = with_metrics


def _in_process(spec, workers, verbose, echo, progress):
    """A phase of the sweep run by one worker in this process."""
    sweep_worker.work(sweep_create.read_spec(Path(spec.folder)))
    finished = sweep_queue.finished_trials(spec, sweep_storage.open_storage(spec.storage_url))
    return sweep_driver.SweepOutcome(spec, finished, [], 0)


def test_a_sweep_stopped_in_its_baseline_phase_resumes_then_places_the_levels_once(tmp_path, fake_training, monkeypatch):
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1, 2], [], 0, tmp_path, "sw", None, None, b_auto=[0.5, 2.0])
    marker = tmp_path / "interrupt"
    marker.write_text("baseline-s2")
    _with_metrics(fake_training, marker)
    with pytest.raises(sweep_worker.WorkerInterrupted):  # stopped in the baseline phase
        sweep_worker.work(spec)
    assert trained(fake_training) == ["baseline-s1"]
    spec = sweep_create.read_spec(Path(spec.folder))
    assert auto_b.levels_pending(spec) and not auto_b.baselines_done(spec, sweep_storage.open_storage(spec.storage_url))

    monkeypatch.setattr(sweep_driver, "run_phase", _in_process)
    lines: list[str] = []
    sweep_driver.run_sweep(spec, 1, False, lines.append, None)
    mean = statistics.fmean([0.2 + 1 / 100, 0.2 + 2 / 100])  # train_loss at the first lowest val_loss
    assert lines == [
        "flood levels: 0.1075, 0.43 = 0.5, 2 x the baseline's train loss at its best evaluation (0.215, mean of 2 seeds)"
    ]
    assert [float(f"{m * mean:.4g}") for m in (0.5, 2)] == [0.1075, 0.43]
    assert trained(fake_training) == ["baseline-s1", "baseline-s2", "flooding-b0.1075-s1", "flooding-b0.1075-s2", "flooding-b0.43-s1", "flooding-b0.43-s2"]
    stored = sweep_create.read_spec(Path(spec.folder))
    assert stored.b_auto == {"multipliers": [0.5, 2.0], "train_loss": 0.215, "seeds": 2, "levels": [0.1075, 0.43]}
    assert stored.expected_runs == 6 and not auto_b.levels_pending(stored)

    # The levels are never placed again: a changed baseline changes nothing.
    (stored.runs_dir / "baseline-s1" / "metrics.csv").write_text(_metrics(50))
    again = sweep_create.read_spec(Path(spec.folder))
    sweep_driver.run_sweep(again, 1, False, lines.append, None)
    assert len(lines) == 1 and sweep_create.read_spec(Path(spec.folder)).b_auto == stored.b_auto
    assert auto_b.place_levels(spec, lines.append) == [0.1075, 0.43]  # another process placing them at once: the stored ones
    assert sweep_create.read_spec(Path(spec.folder)).settings == stored.settings


def test_a_failed_baseline_seed_is_named_with_how_to_continue(tmp_path, fake_training, monkeypatch):
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1, 2], [], 0, tmp_path, "sw", None, None, b_auto=[1.0])
    _with_metrics(fake_training, fail=RuntimeError("out of memory"))
    monkeypatch.setattr(sweep_driver, "run_phase", _in_process)
    with pytest.raises(FloodError) as caught:
        sweep_driver.run_sweep(spec, 1, False, print, None)
    assert str(caught.value) == (
        "baseline seed 1 (runs/baseline-s1) failed (RuntimeError: out of memory); the flood levels of --b auto need every "
        f"baseline seed: fix the cause and run flood sweep --resume {spec.folder}"
    )
    assert auto_b.levels_pending(sweep_create.read_spec(Path(spec.folder)))


# ---------------------------------------------------------------------------
# End to end, real training


def _train_loss_at_best(metrics: Path) -> float:
    with metrics.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["val_loss"]]
    best = min(rows, key=lambda row: float(row["val_loss"]))
    return float(best["train_loss"])


@pytest.mark.slow
@pytest.mark.distributed
def test_auto_b_end_to_end_places_the_levels_from_the_real_baselines(tmp_path):
    result = flood("sweep", "-c", str(tiny_config(tmp_path)), "--b", "auto:1,2", "--seeds", "2", "--out", str(tmp_path / "sweeps"),
                   "--name", "auto", "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "sweeps" / "auto"
    mean = statistics.fmean(_train_loss_at_best(folder / "runs" / f"baseline-s{seed}" / "metrics.csv") for seed in (1, 2))
    levels = [float(f"{m * mean:.4g}") for m in (1, 2)]
    spec = sweep_create.read_spec(folder)
    assert spec.b_auto["levels"] == levels and spec.b_auto["train_loss"] == float(f"{mean:.4g}")
    shown = ", ".join(f"{level:g}" for level in levels)
    assert f"flood levels: {shown} = 1, 2 x the baseline's train loss at its best evaluation ({float(f'{mean:.4g}'):g}, mean of 2 seeds)" in result.stdout
    names = sorted(p.name for p in (folder / "runs").iterdir())
    assert names == sorted(["baseline-s1", "baseline-s2", *(f"flooding-b{level:g}-s{seed}" for level in levels for seed in (1, 2))])

    # A resume never places them again, whatever the baselines' files say now.
    (folder / "runs" / "baseline-s1" / "metrics.csv").write_text("step,epoch,train_loss,val_loss\n1,1,9.0,0.1\n")
    again = flood("sweep", "--resume", str(folder), "-q")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing left to run: 6 of 6 runs complete" in again.stdout and "flood levels:" not in again.stdout
    assert sweep_create.read_spec(folder).b_auto == spec.b_auto
