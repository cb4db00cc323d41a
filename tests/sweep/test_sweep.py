"""`flood sweep`: grids × seeds as Optuna trials, workers that never share a trial, a
sweep that survives SIGKILL, and the same on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flood_cli.core.errors import FloodError
from flood_cli.sweep import create as sweep_create
from flood_cli.sweep import lease as sweep_lease
from flood_cli.sweep import queue as sweep_queue
from flood_cli.sweep import spec as sweep_spec
from flood_cli.sweep import storage as sweep_storage
from flood_cli.sweep import worker as sweep_worker
from tests.conftest import ROOT, small_config, write_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

PROGRESS_LINE = re.compile(r"\[\d+/\d+\] ")  # "[3/6] flooding-b0.3-s1: best val_loss …"


def tiny_config(tmp_path: Path, **train) -> Path:
    """Runs of a couple of seconds: 48 e-mails of 24 tokens, 1 epoch."""
    config = small_config(train={"epochs": 1, "batch_size": 8, **train})
    config["data"].update(max_train_examples=48, max_val_examples=24, max_length=24)
    return write_config(tmp_path, config, "base.yaml")


def flood(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flood_cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


def run_names(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "runs").iterdir())


def trials_of(spec: sweep_spec.SweepSpec) -> list:
    storage = sweep_storage.open_storage(spec.storage_url)
    return sweep_storage.load_study(storage, spec.study).get_trials(deepcopy=False)


# ---------------------------------------------------------------------------
# What is swept


def test_values_seeds_and_ranges_are_parsed_or_refused_in_one_line():
    assert sweep_spec.parse_values("0,0.05, 1e-3", "--b") == [0, 0.05, 0.001]
    assert sweep_spec.parse_seeds("3") == [1, 2, 3] and sweep_spec.parse_seeds("1,2,7") == [1, 2, 7]
    assert sweep_spec.parse_search("b=0:0.6") == sweep_spec.Range("train.b", 0.0, 0.6, False)
    assert sweep_spec.parse_search("ascent_lr=1e-6:1e-4:log") == sweep_spec.Range("train.ascent_lr", 1e-6, 1e-4, True)
    for call, message in [
        (lambda: sweep_spec.parse_values("0.1,,0.2", "--b"), "--b '0.1,,0.2' has an empty value"),
        (lambda: sweep_spec.parse_values("0.1,0.1", "--b"), "--b '0.1,0.1' repeats a value"),
        (lambda: sweep_spec.parse_seeds("0"), "--seeds '0': give a number of seeds"),
        (lambda: sweep_spec.parse_seeds("1,1"), "seeds must be distinct"),
        (lambda: sweep_spec.parse_search("b=0.6:0"), "LOW must be below HIGH"),
        (lambda: sweep_spec.parse_search("b"), "expected KEY=LOW:HIGH"),
    ]:
        with pytest.raises(FloodError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_a_grid_always_holds_a_baseline_for_each_setting_a_baseline_can_share():
    flooding = sweep_spec.grid_settings("flooding", {"train.b": [0.1, 0.2]})
    assert [s.overrides for s in flooding] == [
        {"train.mode": "baseline"}, {"train.mode": "flooding", "train.b": 0.1}, {"train.mode": "flooding", "train.b": 0.2}
    ]
    alternate = sweep_spec.grid_settings("alternate", {"train.lr": [1e-3, 2e-3], "train.ascent_lr": [1e-4]})
    assert [s.label() for s in alternate] == [
        "baseline lr=0.001", "baseline lr=0.002", "alternate lr=0.001 ascent_lr=0.0001", "alternate lr=0.002 ascent_lr=0.0001"
    ]
    assert alternate[2].run_name(3) == "alternate-lr0.001-alr0.0001-s3"


# ---------------------------------------------------------------------------
# End to end


def test_a_2x2_grid_makes_six_runs_a_table_and_a_b_curve(tmp_path):
    result = flood("sweep", "-c", str(tiny_config(tmp_path)), "--b", "0.3,0.6", "--seeds", "2", "--out", str(tmp_path / "sweeps"), "--name", "grid")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "sweeps" / "grid"
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"sweep grid: 3 setting(s) (baseline; flooding b=0.3; flooding b=0.6) × 2 seed(s) = 6 runs, 1 worker(s) → {folder}"
    )
    assert sorted(line.split("] ")[1].split(":")[0] for line in lines if PROGRESS_LINE.match(line)) == run_names(folder)
    assert run_names(folder) == ["baseline-s1", "baseline-s2", "flooding-b0.3-s1", "flooding-b0.3-s2", "flooding-b0.6-s1", "flooding-b0.6-s2"]
    for run in (folder / "runs").iterdir():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and "resumed" not in summary
        assert not (run / "checkpoints").exists()  # deleted once complete (output.keep_checkpoint: false)
    results = (folder / "results.md").read_text()
    assert "**Seed groups: best validation loss of runs that differ only by seed (mean ± sd over seeds)**" in results
    assert sum(line.startswith("| g") and " | 2 | 2 | " in line for line in results.splitlines()) == 3  # 3 groups of 2 seeds
    assert (folder / "b-curve.png").stat().st_size > 10_000
    assert result.stdout.splitlines()[-1].startswith("disk: ") and result.stdout.splitlines()[-1].endswith(f" in {folder}")
    spec = sweep_create.read_spec(folder)
    states = [t.state.name for t in trials_of(spec)]
    assert states == ["COMPLETE"] * 6
    # Each run's steps, noted for the sweep's bar: all done, of the total its summary planned.
    for run in (folder / "runs").iterdir():
        note = json.loads((folder / "workers" / "steps" / f"{run.name}.json").read_text())
        total = json.loads((run / "summary.json").read_text())["total_steps"]
        assert note == {"step": total, "total": total, "ended": True}

    # --resume --settings adds what the sweep lacks, runs only that, and leaves the rest.
    before = {p: p.read_bytes() for p in (folder / "runs").glob("*/metrics.csv")}
    extra = tmp_path / "extra.yaml"
    extra.write_text("- {train.mode: flooding, train.b: 0.3}\n- {train.mode: baseline, train.optimizer: sgd, train.lr: 0.05}\n")
    result = flood("sweep", "--resume", str(folder), "--settings", str(extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == (
        "sweep grid: resuming 4 setting(s) (baseline; flooding b=0.3; flooding b=0.6; baseline optimizer=sgd lr=0.05) "
        "× 2 seed(s) = 8 runs; added 1 setting(s): baseline optimizer=sgd lr=0.05"
    )
    assert sorted(line.split("] ")[1].split(":")[0] for line in result.stdout.splitlines() if PROGRESS_LINE.match(line)) == [
        "baseline-optimizer=sgd-lr0.05-s1", "baseline-optimizer=sgd-lr0.05-s2"
    ]
    assert {p: p.read_bytes() for p in before} == before
    spec = sweep_create.read_spec(folder)
    assert [t.state.name for t in trials_of(spec)] == ["COMPLETE"] * 8 and spec.expected_runs == 8
    runs = folder / "runs"
    assert sweep_spec.config_for(spec, spec.settings[-1], 1, "x").train.optimizer == "sgd"
    assert json.loads((runs / "baseline-optimizer=sgd-lr0.05-s1" / "summary.json").read_text())["status"] == "completed"
    again = flood("sweep", "--resume", str(folder), "--settings", str(extra))
    assert again.returncode == 0 and "added" not in again.stdout.splitlines()[0]
    assert not any(PROGRESS_LINE.match(line) for line in again.stdout.splitlines())
    extra.write_text("- {train.mode: flooding, train.b: -1}\n")
    refused = flood("sweep", "--resume", str(folder), "--settings", str(extra))
    assert refused.returncode == 1 and "train.b: input should be greater than or equal to 0 (got -1)" in refused.stderr
    assert sweep_create.read_spec(folder).settings == spec.settings


def test_bad_sweeps_are_refused_before_anything_exists(tmp_path):
    base = str(tiny_config(tmp_path))
    out = str(tmp_path / "sweeps")
    cases = [
        (["--b", "0.1", "--mode", "alternate"], "train.b does not apply to mode alternate; drop it, or pass --mode flooding"),
        (["--ascent-lr", "0.1"], "error: sweep setting alternate ascent_lr=0.1: train: ascent_lr (0.1) must be smaller than lr (0.001)"),
        ([], "nothing to sweep; give values"),
        (["--search", "b=0:0.6"], "--search needs --trials N"),
        (["--b", "-1"], "train.b: input should be greater than or equal to 0 (got -1)"),
    ]
    for args, message in cases:
        result = flood("sweep", "-c", base, "--out", out, *args)
        assert result.returncode == 1, args
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "sweeps").exists() or list((tmp_path / "sweeps").iterdir()) == []


def _wait(condition, timeout: float = 240, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _completed(folder: Path) -> list[str]:
    done = []
    for summary in glob.glob(str(folder / "runs" / "*" / "summary.json")):
        try:
            if json.loads(Path(summary).read_text()).get("status") == "completed":
                done.append(Path(summary).parent.name)
        except ValueError:
            pass
    return done


def test_a_sweep_killed_with_sigkill_resumes_without_repeating_a_finished_run(tmp_path):
    """SIGKILL of the sweep and its worker after two runs, mid third run: --resume
    reclaims the dead worker's trial at once (its process is gone), continues that run
    from its checkpoint and never touches the two finished ones."""
    base = tiny_config(tmp_path, epochs=3)
    folder = tmp_path / "sweeps" / "killed"
    command = [sys.executable, "-m", "flood_cli", "sweep", "-c", str(base), "--b", "0.5", "--seeds", "2", "--out", str(tmp_path / "sweeps"), "--name", "killed"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait(lambda: len(_completed(folder)) >= 2, what="two finished runs")
        finished = {name: (folder / "runs" / name / "summary.json").read_text() for name in _completed(folder)}
        third = lambda: [p for p in (folder / "runs").iterdir() if p.name not in finished and (p / "checkpoints" / "last.pt").exists()]  # noqa: E731
        _wait(lambda: bool(third()), what="a checkpoint of the third run")
    finally:
        # The workers run in sessions of their own (a terminal's Ctrl-C reaches the sweep
        # only): kill them by their own process groups, as the sweep's.
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        os.killpg(process.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # it had ended already
                os.killpg(int(pid), signal.SIGKILL)
        process.wait()
    interrupted = third()[0]
    assert json.loads((interrupted / "summary.json").read_text())["status"] == "running"

    result = flood("sweep", "--resume", str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_completed(folder)) == 4 and len(run_names(folder)) == 4
    for name, text in finished.items():
        assert (folder / "runs" / name / "summary.json").read_text() == text, f"{name} ran again"
    assert json.loads((interrupted / "summary.json").read_text())["resumed"] == 1
    states = sorted(t.state.name for t in trials_of(sweep_create.read_spec(folder)))
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1  # the dead worker's, queued again
    result = flood("sweep", "--resume", str(folder))  # nothing left: nothing runs
    assert result.returncode == 0 and not [line for line in result.stdout.splitlines() if PROGRESS_LINE.match(line)]


# ---------------------------------------------------------------------------
# Workers never share a trial: the claim race, then whole sweeps with three workers


def _enqueue(storage_url: str, name: str, count: int) -> None:
    import optuna

    study = optuna.create_study(study_name=name, storage=sweep_storage.open_storage(storage_url))
    for number in range(count):
        study.enqueue_trial({}, user_attrs={"run": f"run-{number}"})


CLAIMER = """
import json, os, sys, time
from flood_cli.sweep import spec as sweep_spec, storage as sweep_storage, lease as sweep_lease, queue as sweep_queue, create as sweep_create, worker as sweep_worker
storage = sweep_storage.open_storage(sys.argv[1])
queue = sweep_queue.Queue(storage, sweep_storage.load_study(storage, sys.argv[2]))
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):  # all claimers start together
    time.sleep(0.001)
taken = []
while (claimed := queue.claim()) is not None:
    taken.append(claimed.attrs["run"])
    time.sleep(0.005)  # a little work between claims, as a worker does
print(json.dumps(taken))
"""


def _race(storage_url: str, name: str, go: Path, trials: int = 60, claimers: int = 3) -> None:
    """Claimers started together take every trial exactly once between them."""
    _enqueue(storage_url, name, trials)
    processes = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, storage_url, name, str(go)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(claimers)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    taken = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
    everything = [run for mine in taken for run in mine]
    assert sorted(everything) == sorted(f"run-{n}" for n in range(trials)), "a trial was taken twice or lost"
    assert sum(1 for mine in taken if mine) >= 2, "the claimers did not overlap in time"


def test_three_claimers_on_a_journal_file_take_disjoint_trials(tmp_path):
    _race(str(tmp_path / "race.journal"), "race", tmp_path / "go")


def _three_worker_sweep(tmp_path: Path, *storage: str) -> Path:
    base = tiny_config(tmp_path)
    result = flood(
        "sweep", "-c", str(base), "--b", "0.2,0.5", "--seeds", "3", "--workers", "3", "--out", str(tmp_path / "sweeps"), "--name", "three", *storage,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "sweeps" / "three"
    assert len(run_names(folder)) == 9 and len(_completed(folder)) == 9
    trials = trials_of(sweep_create.read_spec(folder))
    assert sorted(t.user_attrs["run"] for t in trials) == run_names(folder)  # each run in exactly one trial
    assert all(t.state.name == "COMPLETE" for t in trials)
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) >= 2, "the work was not shared out"
    for run in (folder / "runs").iterdir():
        assert "resumed" not in json.loads((run / "summary.json").read_text())
    return folder


def test_three_workers_on_the_default_storage_run_every_trial_once(tmp_path):
    _three_worker_sweep(tmp_path)


def test_three_claimers_on_postgresql_take_disjoint_trials(tmp_path, postgres):
    _race(postgres, "race", tmp_path / "go")


def test_three_workers_on_postgresql_run_every_trial_once_and_another_machine_can_join(tmp_path, postgres):
    folder = _three_worker_sweep(tmp_path, "--storage", postgres, "--study", "three-pg")
    spec = sweep_create.read_spec(folder)
    assert spec.storage == postgres and spec.study == "three-pg"
    # A worker joining later from "another machine" finds nothing left to do.
    joined = flood("sweep", "--storage", postgres, "--study", "three-pg", "--worker")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.strip() == "worker done: 0 trial(s)"


def test_a_search_runs_tpe_trials_over_every_seed_next_to_a_baseline(tmp_path):
    """--search: the baseline's seeds as a grid of their own, then TPE trials, each the
    mean of its seeds; the budget is kept; the b-curve shows the tried values."""
    result = flood(
        "sweep", "-c", str(tiny_config(tmp_path)), "--search", "b=0.1:0.9", "--trials", "3", "--seeds", "2",
        "--workers", "2", "--out", str(tmp_path / "sweeps"), "--name", "tpe",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "sweeps" / "tpe"
    spec = sweep_create.read_spec(folder)
    storage = sweep_storage.open_storage(spec.storage_url)
    search = sweep_storage.load_study(storage, spec.study).get_trials(deepcopy=False)
    assert [t.state.name for t in search] == ["COMPLETE"] * 3
    names = run_names(folder)
    assert len(names) == 2 + 3 * 2 and names[:2] == ["baseline-s1", "baseline-s2"]
    for trial in search:
        runs = trial.user_attrs["runs"]
        assert len(runs) == 2 and all(0.1 <= trial.params["train.b"] <= 0.9 for _ in runs)
        losses = [json.loads((folder / "runs" / run / "summary.json").read_text())["best_val_loss"] for run in runs]
        assert trial.value == pytest.approx(sum(losses) / 2)
    assert (folder / "b-curve.png").exists()


def test_a_pruned_search_trial_stops_early_and_says_so(tmp_path, monkeypatch):
    """--prune: a trial the pruner stops is PRUNED in the study and its run says status
    pruned (the pruner's verdict is forced here: on runs this small it rarely prunes)."""
    import optuna

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    folder = tmp_path / "sweeps" / "pruned"
    spec = sweep_create.create_sweep(
        tiny_config(tmp_path, eval_every=2), None, {}, [1], [sweep_spec.Range("train.b", 0.1, 0.9)], 2, tmp_path / "sweeps", "pruned", None, None, True
    )
    assert sweep_worker.work(spec) == 3  # the baseline run and two search trials
    trials = sweep_storage.load_study(sweep_storage.open_storage(spec.storage_url), spec.study).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    pruned = [p for p in (folder / "runs").iterdir() if json.loads((p / "summary.json").read_text())["status"] == "pruned"]
    assert len(pruned) == 1
    summary = json.loads((pruned[0] / "summary.json").read_text())
    assert summary["error"].startswith("RunPruned: pruned at step 2: val_loss ") and summary["steps_completed"] == 2


def test_a_trial_whose_worker_stopped_beating_is_queued_again_with_its_run(tmp_path, monkeypatch):
    """Another machine's worker, seen silent for longer than the grace period, loses its
    trial: it is failed and enqueued again with the same run; a beating one is left alone."""
    url = str(tmp_path / "beats.journal")
    _enqueue(url, "beats", 2)
    storage = sweep_storage.open_storage(url)
    queue = sweep_queue.Queue(storage, sweep_storage.load_study(storage, "beats"))
    silent, beating = queue.claim(), queue.claim()
    for claimed in (silent, beating):
        storage.set_trial_user_attr(claimed.trial_id, "host", "another-machine")
        storage.set_trial_user_attr(claimed.trial_id, "heartbeat", time.time())
    clock = [time.monotonic()]
    monkeypatch.setattr(sweep_lease.time, "monotonic", lambda: clock[0])
    assert queue.reclaim_stale() == []  # first seen: not judged yet
    clock[0] += sweep_lease.GRACE_S + 1
    storage.set_trial_user_attr(beating.trial_id, "heartbeat", time.time() + 1)  # it beat meanwhile
    assert queue.reclaim_stale() == [silent.number]
    assert queue.reclaim_stale() == []  # reclaimed once
    trials = queue.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING", "WAITING"]
    assert trials[2].user_attrs == {"run": silent.attrs["run"], "retry_of": silent.number}
    # A worker on this host whose process is gone needs no grace period.
    mine = queue.claim()
    storage.set_trial_user_attr(mine.trial_id, "host", socket.gethostname())
    storage.set_trial_user_attr(mine.trial_id, "pid", 2**22 + 12345)  # no such process
    storage.set_trial_user_attr(mine.trial_id, "pid_ns", sweep_lease._pid_namespace())  # in this PID namespace
    storage.set_trial_user_attr(mine.trial_id, "heartbeat", time.time())
    assert queue.reclaim_stale() == [mine.number]


def test_set_sweeps_any_key_crossed_with_the_flood_levels():
    from flood_cli.cli.main import _sweep_axes

    axes = _sweep_axes("0.1,0.2", None, None, ["train.weight_decay=0,0.01", "data.max_length=32"])
    assert axes == {"train.b": [0.1, 0.2], "train.weight_decay": [0, 0.01], "data.max_length": [32]}
    settings = sweep_spec.grid_settings("flooding", axes)
    assert len(settings) == 2 + 4  # a baseline per weight decay, then every flood level with each
    assert settings[0].run_name(1) == "baseline-max_length=32-weight_decay=0-s1"  # keys in the config's order


@pytest.mark.parametrize(
    "mode, axes, names",
    [
        ("iflood", {"train.b": [0.05, 0.1]}, ["baseline-s1", "iflood-b0.05-s1", "iflood-b0.1-s1"]),
        ("gradnorm", {"train.gradnorm.alpha": [0.5, 1.0]}, ["baseline-s1", "gradnorm-alpha=0.5-s1", "gradnorm-alpha=1-s1"]),
        ("backstitch", {"train.backstitch.scale": [0.2]}, ["baseline-s1", "backstitch-scale=0.2-s1"]),
        ("adaflood", {"train.adaflood.gamma": [0.2, 0.8]}, ["baseline-s1", "adaflood-gamma=0.2-s1", "adaflood-gamma=0.8-s1"]),
    ],
)
def test_every_mode_of_the_family_sweeps_its_own_knobs_next_to_a_baseline(tmp_path, mode, axes, names):
    """The settings validate before anything exists, the baseline carries none of the
    mode's settings, and each run's config has exactly the swept value."""
    spec = sweep_create.create_sweep(tiny_config(tmp_path), mode, axes, [1], [], 0, tmp_path / "sweeps", "family", None, None)
    settings = [sweep_spec.Setting(overrides) for overrides in spec.settings]
    assert [s.run_name(1) for s in settings] == names
    baseline = sweep_spec.config_for(spec, settings[0].overrides, 1, names[0])
    assert baseline.train.mode == "baseline" and baseline.train.b is None and baseline.train.gradnorm is None
    (key, values), = axes.items()
    for setting, value in zip(settings[1:], values, strict=False):
        cfg = sweep_spec.config_for(spec, setting.overrides, 1, setting.run_name(1))
        node = cfg.model_dump()
        for part in key.split("."):
            node = node[part]
        assert cfg.train.mode == mode and node == value


def test_a_settings_file_sweeps_several_methods_next_to_a_baseline(tmp_path):
    """--settings: a study of several modes in one sweep; a baseline is added, each
    setting keeps its own mode and knobs, and a bad file is one line."""
    listed = tmp_path / "methods.yaml"
    listed.write_text(
        "- {train.mode: flooding, train.b: 0.05}\n"
        "- {train.mode: iflood, train.b: 0.05}\n"
        "- {train.mode: adaflood, train.adaflood.gamma: 0.5}\n"
        "- {train.mode: alternate, train.ascent_lr: 1.0e-4}\n"
        "- {train.mode: backstitch, train.lr: 0.05}\n"
    )
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1, 2], [], 0, tmp_path / "sweeps", "methods", None, None, False, sweep_spec.read_settings(listed))
    names = [sweep_spec.Setting(s).run_name(1) for s in spec.settings]
    assert names == ["baseline-s1", "flooding-b0.05-s1", "iflood-b0.05-s1", "adaflood-gamma=0.5-s1", "alternate-alr0.0001-s1", "backstitch-lr0.05-s1"]
    assert spec.expected_runs == 12
    modes = [sweep_spec.config_for(spec, s, 1, "x").train.mode for s in spec.settings]
    assert modes == ["baseline", "flooding", "iflood", "adaflood", "alternate", "backstitch"]
    # A baseline of other settings (SGD beside backstitch) does not stand in for the plain one.
    listed.write_text("- {train.mode: baseline, train.optimizer: sgd, train.lr: 0.05}\n- {train.mode: backstitch, train.lr: 0.05}\n")
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1], [], 0, tmp_path / "sweeps", "sgd", None, None, False, sweep_spec.read_settings(listed))
    assert [sweep_spec.Setting(s).run_name(1) for s in spec.settings] == ["baseline-s1", "baseline-optimizer=sgd-lr0.05-s1", "backstitch-lr0.05-s1"]
    listed.write_text("- {train.mode: baseline}\n- {train.mode: iflood, train.b: 0.05}\n")
    spec = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1], [], 0, tmp_path / "sweeps", "listed", None, None, False, sweep_spec.read_settings(listed))
    assert [sweep_spec.Setting(s).run_name(1) for s in spec.settings] == ["baseline-s1", "iflood-b0.05-s1"]
    search = sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1], [sweep_spec.parse_search("b=0:0.6")], 2, tmp_path / "sweeps", "search", None, None, False)
    with pytest.raises(FloodError, match=r"sweep search is a --search; settings can be added to a grid sweep only"):
        sweep_create.add_settings(search, [{"train.mode": "iflood", "train.b": 0.05}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {train.b: 0.05}\n")
    with pytest.raises(FloodError, match=r"setting 1 must be a mapping with train.mode"):
        sweep_spec.read_settings(bad)
    bad.write_text("- {train.mode: iflood, train.b: 0.05}\n- {train.b: 0.05, train.mode: iflood}\n")
    with pytest.raises(FloodError, match=r"--settings: .* are the same experiment once validated \(as iflood b=0.05\); keep one"):
        sweep_create.create_sweep(tiny_config(tmp_path), None, {}, [1], [], 0, tmp_path / "sweeps", "twice", None, None, False, sweep_spec.read_settings(bad))
