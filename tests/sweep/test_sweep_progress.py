"""The sweep's overall bar counts the runs' steps: it and its ETA move from the first step."""

from __future__ import annotations

import io
import json
import types

from flood_cli.core.progress import SweepProgress
from flood_cli.core.reporting import NullReporter
from flood_cli.sweep import driver
from flood_cli.sweep.spec import WORKERS_DIR
from flood_cli.sweep.steps import STEPS_DIR, StepCount, StepNotes
from tests.sweep.test_sweep_recovery import make_sweep


class ScriptedWorker:
    """A worker whose poll() runs the next step of a script (None: still running)."""

    def __init__(self, script):
        self.script = list(script)

    def poll(self):
        if not self.script:
            return 0
        self.script.pop(0)()
        return None


def test_the_bar_and_its_eta_move_after_the_first_step_of_the_first_run(tmp_path, monkeypatch):
    spec = make_sweep(tmp_path)  # four runs
    folder = tmp_path / "sw" / WORKERS_DIR / STEPS_DIR
    progress = SweepProgress(live=True)
    progress.bar.console.file = io.StringIO()
    seen = []

    def bar():
        task = progress.bar.tasks[0]
        seen.append((task.completed, task.total, task.fields.get("eta"), task.fields.get("runs")))

    notes = StepNotes(NullReporter(), folder, "baseline-s1", every_s=0)
    clock = iter(range(1000, 2000, 10))
    monkeypatch.setattr(driver, "time", types.SimpleNamespace(time=lambda: next(clock), sleep=lambda seconds: None))
    script = [
        bar,
        lambda: (notes.start(10, 5, 2), notes.step(1, 0.2, None)),
        bar,
        lambda: notes.step(2, 0.4, None),
        lambda: None,
        bar,
    ]
    with progress:
        driver.follow(spec, [ScriptedWorker(script)], lambda text: None, progress, poll_s=0)
    assert seen[0][:2] == (0, None)  # no run has started: no total yet
    assert seen[1] == (1, 40, "about 6:30 left", "0/4 runs")  # 10 steps planned for each of 4 runs; 10 s a step, 39 left
    assert seen[2][:2] == (2, 40)
    assert json.loads((folder / "baseline-s1.json").read_text()) == {"step": 2, "total": 10, "ended": False}


def test_runs_not_noted_count_the_mean_and_ended_ones_count_as_done(tmp_path):
    notes = [("a", 10, 10, True), ("b", 30, 5, False)]
    for name, total, step, ended in notes:
        (tmp_path / f"{name}.json").write_text(json.dumps({"step": step, "total": total, "ended": ended}))
    (tmp_path / "cut.json").write_text('{"step": 3, "to')
    count = StepCount(tmp_path)
    # 2 runs noted (40 steps) + 2 not noted at the mean of 20; one of those ended (failed early).
    assert count.progress(expected_runs=4, runs_ended=2) == (80, 35, 0)
    (tmp_path / "b.json").write_text(json.dumps({"step": 6, "total": 30, "ended": False}))
    assert count.progress(expected_runs=4, runs_ended=2) == (80, 36, 1)
