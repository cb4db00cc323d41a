"""The progress bar: lives at the edge (the CLI), fed by the loop's Reporter calls.

On a terminal it shows epoch, step, the running loss and the last evaluation; when
stderr is not a terminal (CI, pipes, log files) or with ``--quiet`` it prints only
warnings.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from flood_cli.train import NullReporter


class RichReporter:
    # Reading the loss costs one host-device sync, so the bar reads it every N steps only.
    live_loss_every = 20

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]:.2f}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[last_eval]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task: Optional[Any] = None

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        self.task = self.progress.add_task("train", total=total_steps, epoch=0.0, loss="…", last_eval="")

    def step(self, step: int, epoch: float, loss: Optional[float]) -> None:
        fields: dict[str, Any] = {"epoch": epoch}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        self.progress.update(self.task, completed=step, **fields)

    def evaluation(self, row: dict[str, Any]) -> None:
        self.progress.update(
            self.task,
            last_eval=f"val_loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} (best {row['best_val_loss']:.4f})",
        )

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def warning(self, text: str) -> None:
        self.console.print(f"warning: {text}", markup=False, highlight=False)

    def notice(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


class QuietReporter(NullReporter):
    """No progress, but warnings and notices (work done on the run's behalf, such as
    AdaFlood's auxiliary runs) still reach the user, one line each on stderr."""

    def warning(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def notice(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


@contextmanager
def make_reporter(quiet: bool) -> Iterator[Any]:
    if quiet or not sys.stderr.isatty():
        yield QuietReporter()
        return
    with RichReporter() as reporter:
        yield reporter


class SweepProgress:
    """A sweep's own line per finished run, and on a terminal an overall bar below the
    lines: runs done and remaining, elapsed time and an ETA from the runs so far."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.bar: Optional[Any] = None
        self.task: Optional[Any] = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("runs"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=Console(file=sys.stdout),
            )

    def __enter__(self) -> "SweepProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def echo(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def start(self, total: int, done: int) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task("sweep", total=total, completed=done, eta="")

    def update(self, done: int, eta_s: Optional[float]) -> None:
        if self.bar is not None and self.task is not None:
            eta = "" if eta_s is None else f"about {_duration(eta_s)} left"
            self.bar.update(self.task, completed=done, eta=eta)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def make_sweep_progress() -> SweepProgress:
    return SweepProgress(live=sys.stdout.isatty())
