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
