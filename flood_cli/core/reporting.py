"""What a running command tells the outside world: the reporter protocol, and the
reporter that tells no one. Shared by flood train, the sweep's workers and its
coordinator, so it imports nothing heavier than typing."""

from __future__ import annotations

from typing import Any, Protocol


class Reporter(Protocol):
    """What the loop tells the outside world (the CLI draws a progress bar from it)."""

    # How often (in optimizer steps) `step` receives train_loss; reading it costs a host
    # sync, so 0 (never) unless the reporter shows it.
    live_loss_every: int

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None: ...
    # After each optimizer step: ``step`` counts from 1, ``epoch`` is step / steps_per_epoch
    # (as the CSV's epoch), ``train_loss`` the mean training loss over this process's
    # examples since the last evaluation (as the CSV's train_loss), or None between reads.
    def step(self, step: int, epoch: float, train_loss: float | None) -> None: ...
    def evaluation(self, row: dict[str, Any]) -> None: ...
    # Right before the run writes a row, its summary or a checkpoint: a sweep worker
    # checks there that it still owns the run (and stops at once if it may not).
    def before_write(self) -> None: ...
    def message(self, text: str) -> None: ...
    def warning(self, text: str) -> None: ...
    def notice(self, text: str) -> None: ...


class NullReporter:
    live_loss_every = 0

    def start(self, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
        pass

    def step(self, step: int, epoch: float, loss: float | None) -> None:
        pass

    def evaluation(self, row: dict[str, Any]) -> None:
        pass

    def before_write(self) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass

    def notice(self, text: str) -> None:
        pass
