"""The progress bar: lives at the edge (the CLI), fed by the loop's Reporter calls.

On a terminal it shows one line: the epoch and step counted as the CSV counts them, the
mean training loss since the last evaluation (the CSV's train_loss), the last
evaluation, and the elapsed and remaining time, fitted to the terminal's width. When
stderr is not a terminal (CI, pipes, log files) or with ``--quiet`` it prints only
warnings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flood_cli.core.reporting import NullReporter


class RichReporter:
    """One line on stderr: epoch, bar, step counter, the running training loss, the last
    evaluation, elapsed and remaining time, fitted to the terminal's width (see `fit_line`)."""

    # Reading the loss costs one host-device sync, so the bar asks for it every N steps only.
    live_loss_every = 20

    def __init__(self, console: Any | None = None, get_time: Callable[[], float] | None = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.progress = _training_progress(self.console, get_time)
        self.task: Any | None = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        self.task = self.progress.add_task("train", total=total_steps, epoch=0.0, epochs=epochs, loss=None, last_eval=None)

    def step(self, step: int, epoch: float, train_loss: float | None) -> None:
        """``epoch`` is step / steps_per_epoch, as the CSV's; ``train_loss`` (when read)
        the mean loss since the last evaluation, as the CSV's train_loss."""
        fields: dict[str, Any] = {"epoch": epoch}
        if train_loss is not None:
            fields["loss"] = train_loss
        self.progress.update(self.task, completed=step, **fields)

    def evaluation(self, row: dict[str, Any]) -> None:
        # The row's train_loss is the interval's exact mean: the bar shows the CSV's value.
        self.progress.update(self.task, loss=row["train_loss"], last_eval=row)

    def before_write(self) -> None:
        pass

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def warning(self, text: str) -> None:
        self.console.print(f"warning: {text}", markup=False, highlight=False)

    def notice(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


# The bar's width: as wide as the line leaves, within these bounds, or left out.
BAR_MIN, BAR_MAX = 10, 40
# What gives way when the line is too wide, in order: the last evaluation loses its
# accuracy, then "train_loss" becomes "loss" and the evaluation its best loss, then it
# goes; then the bar, the epoch and the loss go, and last the times' labels. The step
# counter and the two times stay.
FIT_LEVELS: tuple[dict[str, Any], ...] = (
    {"last_eval": 0, "loss": 0, "bar": True, "epoch": True},
    {"last_eval": 1, "loss": 0, "bar": True, "epoch": True},
    {"last_eval": 1, "loss": 1, "bar": True, "epoch": True},
    {"last_eval": 2, "loss": 1, "bar": True, "epoch": True},
    {"last_eval": None, "loss": 1, "bar": True, "epoch": True},
    {"last_eval": None, "loss": 1, "bar": False, "epoch": True},
    {"last_eval": None, "loss": 1, "bar": False, "epoch": False},
    {"last_eval": None, "loss": None, "bar": False, "epoch": False},
    {"last_eval": None, "loss": None, "bar": False, "epoch": False, "bare_times": True},
)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _eval_texts(row: dict[str, Any] | None) -> tuple[str, ...]:
    if row is None:
        return ("", "", "")
    val, best = f"val_loss {row['val_loss']:.4f}", f"(best {row['best_val_loss']:.4f})"
    return (f"{val} acc {row['val_accuracy']:.3f} {best}", f"{val} {best}", val)


def fit_line(task: Any, width: int) -> list[Any]:
    """The bar's cells for ``task``, as many and as long as ``width`` columns hold (cells
    are one space apart): texts, and the bar as a (completed, total, width) tuple."""
    fields = task.fields
    loss = "…" if fields.get("loss") is None else f"{fields['loss']:.4f}"
    epoch = f"epoch {fields.get('epoch', 0.0):.2f}/{fields.get('epochs', '?')}"
    counter = f"{int(task.completed)}/{int(task.total or 0)}"
    elapsed = _clock(task.finished_time if task.finished else task.elapsed)
    remaining = _clock(task.time_remaining)
    evaluations = _eval_texts(fields.get("last_eval"))
    cells: list[Any] = []
    for level in FIT_LEVELS:
        cells = [
            epoch if level["epoch"] else None,
            "bar" if level["bar"] else None,
            counter,
            None if level["loss"] is None else ("train_loss " if level["loss"] == 0 else "loss ") + loss,
            None if level["last_eval"] is None else evaluations[level["last_eval"]] or None,
            elapsed if level.get("bare_times") else f"elapsed {elapsed}",
            remaining if level.get("bare_times") else f"remaining {remaining}",
        ]
        cells = [cell for cell in cells if cell is not None]
        used = sum(len(cell) for cell in cells if cell != "bar") + len(cells) - 1
        if used + (BAR_MIN if level["bar"] else 0) <= width:
            break
    return [(task.completed, task.total, max(BAR_MIN, min(BAR_MAX, width - used))) if cell == "bar" else cell for cell in cells]


def _training_progress(console: Any, get_time: Callable[[], float] | None) -> Any:
    """rich's Progress whose line is laid out by `fit_line` for the console's width at
    each refresh (rich's own columns would squeeze every field alike: `5… 0:1…`)."""
    from rich.progress import Progress, ProgressBar
    from rich.table import Column, Table
    from rich.text import Text

    class TrainingProgress(Progress):
        def make_tasks_table(self, tasks: Iterable[Any]) -> Table:
            rows = [fit_line(task, self.console.width) for task in tasks if task.visible]
            table = Table.grid(*(Column(no_wrap=True) for _ in (rows[0] if rows else ())), padding=(0, 1))
            for cells in rows:
                table.add_row(
                    *(
                        ProgressBar(total=cell[1], completed=cell[0], width=cell[2]) if isinstance(cell, tuple) else Text(cell)
                        for cell in cells
                    )
                )
            return table

    options: dict[str, Any] = {"get_time": get_time} if get_time is not None else {}
    return TrainingProgress(console=console, transient=False, **options)


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
    lines: the runs' steps done of their planned total (an estimate until every run has
    started), runs done, elapsed time and an ETA from the steps taken so far."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.bar: Any | None = None
        self.task: Any | None = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[runs]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=Console(file=sys.stdout),
            )

    def __enter__(self) -> SweepProgress:
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

    def start(self, total: int | None, done: int) -> None:
        """``total`` steps (None while no run has said how many it plans), ``done`` of them."""
        if self.bar is not None:
            self.task = self.bar.add_task("sweep", total=total, completed=done, eta="", runs="")

    def update(self, done: int, eta_s: float | None, total: int | None = None, runs: str = "") -> None:
        if self.bar is not None and self.task is not None:
            eta = "" if eta_s is None else f"about {_duration(eta_s)} left"
            self.bar.update(self.task, completed=done, eta=eta, runs=runs, **({"total": total} if total is not None else {}))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def make_sweep_progress() -> SweepProgress:
    return SweepProgress(live=sys.stdout.isatty())
