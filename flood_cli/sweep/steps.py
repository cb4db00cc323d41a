"""The steps of a sweep's runs, for its overall progress bar (no torch, no storage).

A worker notes its run's step and planned total steps in ``workers/steps/<run>.json``
(on the run's first step, then at most once a second, and when the run ends); the
sweep's own process sums the notes. A run not started yet counts the mean planned
total of the runs noted so far (the totals depend on the data, which only the training
reads), so the bar's total is an estimate until every run has started."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flood_cli.runs.folder import atomic_write_text

STEPS_DIR = "steps"  # under the sweep's workers/ folder
NOTE_EVERY_S = 1.0


@dataclass(frozen=True)
class Note:
    step: int
    total: int
    ended: bool = False

    @property
    def done(self) -> int:
        return self.total if self.ended else min(self.step, self.total)


def _read(path: Path) -> Note | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        note = Note(int(data["step"]), int(data["total"]), bool(data.get("ended", False)))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # cut or foreign: read again at the next poll
    return note if note.total > 0 and note.step >= 0 else None


class StepNotes:
    """A worker's reporter wrapper that notes the run's step for the sweep's bar."""

    def __init__(self, inner: Any, folder: Path, run: str, every_s: float = NOTE_EVERY_S):
        self.inner, self.path, self.every_s = inner, folder / f"{run}.json", every_s
        self.live_loss_every = inner.live_loss_every
        previous = _read(self.path)  # a resumed run keeps its steps until its next one
        self.step_now, self.total = (previous.step, previous.total) if previous else (0, 0)
        self.written = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _write(self, ended: bool = False) -> None:
        if self.total <= 0:
            return
        with contextlib.suppress(OSError):  # the bar is no reason to stop a run
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"step": self.step_now, "total": self.total, "ended": ended}))
        self.written = time.monotonic()

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        self.total = int(total_steps)
        self._write()
        self.inner.start(total_steps, steps_per_epoch, epochs)

    def step(self, step: int, epoch: float, train_loss: float | None) -> None:
        first = self.step_now == 0
        self.step_now = step
        if first or time.monotonic() - self.written >= self.every_s:
            self._write()
        self.inner.step(step, epoch, train_loss)

    def ended(self) -> None:
        """The run ended (completed, failed or pruned): all its steps count as done."""
        self._write(ended=True)


class StepCount:
    """The sweep's side: the notes read at each poll (a file again only when changed)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.notes: dict[str, tuple[int, Note | None]] = {}
        self.noted_at_start: int | None = None

    def read(self) -> list[Note]:
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            for entry in entries:
                if not entry.name.endswith(".json"):
                    continue
                with contextlib.suppress(OSError):
                    changed = entry.stat().st_mtime_ns
                    if self.notes.get(entry.name, (None,))[0] != changed:
                        self.notes[entry.name] = (changed, _read(Path(entry.path)))
        return [note for _, note in self.notes.values() if note is not None]

    def progress(self, expected_runs: int, runs_ended: int) -> tuple[int | None, int, int]:
        """(total steps or None while no run has started, steps done, steps done since
        the first reading: the pace for the ETA). A run not noted counts the mean total;
        runs that ended without a note (before this sweep noted steps, or failed before
        their first step) count as done."""
        notes = self.read()
        noted = sum(note.done for note in notes)
        if self.noted_at_start is None:
            self.noted_at_start = noted
        if not notes:
            return None, 0, 0
        mean = sum(note.total for note in notes) / len(notes)
        unnoted = max(0, expected_runs - len(notes))
        ended_unnoted = min(unnoted, max(0, runs_ended - sum(note.ended for note in notes)))
        total = sum(note.total for note in notes) + round(unnoted * mean)
        done = min(total, noted + round(ended_unnoted * mean))
        return total, done, noted - self.noted_at_start
