"""Stopping cleanly: SIGINT/SIGTERM stop the loop after a step, at the same step on every process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second one stops at once.

    With several processes a signal may reach one of them only, or each at a different
    step; a process that stopped alone would leave the others waiting in the next
    all-reduce. So the processes agree: after each step every one contributes its flag
    to an all-reduce (max) on a small CPU (gloo) group, started without waiting and
    read one step later, and all of them stop after the same step. The flag's reduce
    never touches the GPU, and reading it a step late means no process waits for it."""

    def __init__(self, num_processes: int):
        self.signal: int | None = None
        self._group: Any = None
        self._pending: Any = None
        self._flag = torch.zeros(1, dtype=torch.int32)
        if num_processes > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")  # collective: every process creates it here

    def handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def agreed(self) -> int | None:
        """The signal every process stops for after this step, or None to go on."""
        if self._group is None:
            return self.signal
        import torch.distributed as dist

        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if self._flag.item():
                return int(self._flag.item())
        self._flag = torch.tensor([self.signal or 0], dtype=torch.int32)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return None

    def close(self) -> None:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


@contextmanager
def stop_requests(num_processes: int = 1) -> Iterator[StopRequest]:
    request = StopRequest(num_processes)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class EarlyStopping:
    """The early-stopping decision (train.early_stopping), one per run, on every process.

    After each evaluation ``update(val_loss)`` says whether the run stops there. An
    evaluation improves when ``val_loss < best - min_delta``, ``best`` being the lowest
    val_loss of the run so far (the first evaluation always improves; a nan never does);
    ``patience`` evaluations in a row that do not improve stop the run. Every process
    reads the same val_loss (it is reduced over all of them), so every one takes the same
    decision at the same step and no agreement is needed. The state is saved in each
    checkpoint (``state``), so a resumed run stops where an uninterrupted one does."""

    def __init__(self, patience: int, min_delta: float, state: dict[str, Any] | None = None):
        self.patience = patience
        self.min_delta = min_delta
        self.best = float("inf")
        self.waiting = 0  # evaluations in a row without an improvement
        self.stopped_at: int | None = None  # the step the run stopped at
        if state is not None:
            self.best, self.waiting, self.stopped_at = float(state["best"]), int(state["waiting"]), state["stopped_at"]

    def update(self, val_loss: float, step: int) -> bool:
        """Count the evaluation at ``step``; True when the run stops after it."""
        if val_loss < self.best - self.min_delta:
            self.waiting = 0
        else:
            self.waiting += 1
        if val_loss < self.best:
            self.best = val_loss
        if self.waiting >= self.patience:
            self.stopped_at = step
        return self.stopped_at is not None

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "waiting": self.waiting, "stopped_at": self.stopped_at}
