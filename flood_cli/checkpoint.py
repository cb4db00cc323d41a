"""Training checkpoints: everything needed for a resumed run to give the same numbers
as one that never stopped, written atomically (temporary file, fsync, rename), in a
background thread while training goes on.

A checkpoint holds only tensors and plain containers (dicts, lists, tuples, numbers,
strings), so it is read with ``torch.load(weights_only=True)``: a ``last.pt`` from
someone else can hold data, never code that runs when it is loaded.
"""

from __future__ import annotations

import copy
import pickle
import random
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from flood_cli.errors import FloodError
from flood_cli.runs import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FORMAT = 2  # 2: loadable with weights_only=True; RNG states and interval figures per process


def capture_rng() -> dict[str, Any]:
    """Every random state of this process that the loop touches (dropout draws from
    torch's generators), as tensors and plain containers."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy

        name, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, cached_gaussian)
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy

        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        numpy.random.set_state((name, keys.numpy().astype(numpy.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST


def remove(run_dir: Path) -> None:
    """Delete a completed run's checkpoints (kept only with output.keep_checkpoint)."""
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write the checkpoint so that a kill at any moment leaves the previous one whole."""
    path.parent.mkdir(exist_ok=True)

    def write(handle: Any) -> None:
        recorder = _WriteErrors(handle)
        try:
            torch.save({"format": FORMAT, **payload}, recorder)
        except RuntimeError:
            # torch's zip writer reports a failed write as "unexpected pos …"; the
            # OSError behind it (a full disk, a file-size limit) is the one to tell.
            if recorder.error is not None:
                raise OSError(recorder.error.errno, recorder.error.strerror, str(path)) from None
            raise

    atomic_write(path, write, binary=True)


class _WriteErrors:
    """A file wrapper that remembers the first OSError its ``write`` raised."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.handle.flush()


class UnreadableCheckpoint(FloodError):
    """A last.pt that cannot be resumed from: not flood's, damaged, or another format."""


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint as data only (weights_only=True: nothing in it is called or
    imported; a pickle that asks for any other object is refused before it runs)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # a pickle that names a function or class to call: code, not data
            raise UnreadableCheckpoint(
                f"checkpoint {path} is not a flood checkpoint (it asks to load {found.group(1)}, which flood never "
                "loads); nothing in it was run"
            ) from None
        detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        raise UnreadableCheckpoint(f"checkpoint {path} is damaged ({(detail.group(1) if detail else text)[:100]})") from None
    except Exception as exc:  # random or cut bytes fail in many ways inside the unpickler
        if isinstance(exc, OSError) and exc.strerror:
            raise
        raise UnreadableCheckpoint(f"checkpoint {path} is damaged ({' '.join(str(exc).split())[:120]})") from None
    version = payload.get("format") if isinstance(payload, dict) else None
    if version != FORMAT:
        raise UnreadableCheckpoint(
            f"checkpoint {path} has format {str(version)[:20]!r}, not {FORMAT} (written by another version of flood, or not by flood)"
        )
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
