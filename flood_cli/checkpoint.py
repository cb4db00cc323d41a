"""Training checkpoints: everything needed for a resumed run to give the same numbers
as one that never stopped, written atomically (temporary file, fsync, rename), in a
background thread while training goes on."""

from __future__ import annotations

import copy
import random
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from flood_cli.runs import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FORMAT = 1


def capture_rng() -> dict[str, Any]:
    """Every random state the loop touches: dropout draws from torch's generators."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write the checkpoint so that a kill at any moment leaves the previous one whole."""
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, lambda handle: torch.save({"format": FORMAT, **payload}, handle), binary=True)


def load(path: Path) -> dict[str, Any]:
    # weights_only=False: the payload holds RNG states (tuples, numpy arrays) that we wrote.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {payload.get('format')} is not {FORMAT}")
    return payload


def snapshot(payload: Any) -> Any:
    """A copy of ``payload`` on the CPU that training can no longer change: every tensor
    copied (the live weights, Adam moments and accumulators are updated in place),
    every container rebuilt, other values deep-copied. Ordered dicts keep their
    ``_metadata``, which ``load_state_dict`` reads."""
    if isinstance(payload, torch.Tensor):
        return payload.detach().to("cpu", copy=True)
    if isinstance(payload, dict):
        copied = type(payload)((key, snapshot(value)) for key, value in payload.items())
        if hasattr(payload, "_metadata"):
            copied._metadata = copy.deepcopy(payload._metadata)  # type: ignore[attr-defined]
        return copied
    if isinstance(payload, (list, tuple)):
        return type(payload)(snapshot(value) for value in payload)
    return copy.deepcopy(payload)


class BackgroundWriter:
    """Writes one checkpoint at a time in a thread, so that training goes on while a
    large file goes to disk (torch.save releases the GIL while it writes).

    ``submit`` first waits for the previous write. ``wait`` joins the write in flight,
    re-raises its error in the caller's thread, and then runs its ``done`` callback
    there (the summary is only ever written from the training thread). A kill at any
    moment leaves the previous checkpoint whole: the write is atomic."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._done: Optional[Callable[[], None]] = None

    def submit(self, path: Path, payload: dict[str, Any], done: Callable[[], None]) -> None:
        self.wait()

        def write() -> None:
            try:
                save(path, payload)
            except BaseException as exc:  # re-raised by wait(), in the training thread
                self._error = exc

        self._done = done
        # Not a daemon: an exiting interpreter finishes the write rather than cut it short.
        self._thread = threading.Thread(target=write, name="flood-checkpoint-writer")
        self._thread.start()

    def poll(self) -> None:
        """Settle a write that has finished (cheap; called every step)."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join()
        error, self._error = self._error, None
        done, self._done = self._done, None
        if error is not None:
            raise error
        if done is not None:
            done()

    def settle_quietly(self) -> None:
        """Wait for the write in flight when the run is already failing: its own error,
        if any, must not hide the one that stopped the run."""
        try:
            self.wait()
        except Exception:
            pass
