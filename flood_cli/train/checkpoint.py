"""Training checkpoints: everything needed for a resumed run to give the same numbers
as one that never stopped, written atomically (temporary file, fsync, rename), in a
background thread while training goes on.

A checkpoint holds only tensors and plain containers (dicts, lists, tuples, numbers,
strings), so it is read with ``torch.load(weights_only=True)``: a ``last.pt`` from
someone else can hold data, never code that runs when it is loaded.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import random
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flood_cli.core.errors import FloodError
from flood_cli.runs.folder import atomic_write

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
        state["numpy"] = (name, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, cached_gaussian)  # type: ignore[attr-defined]  # numpy's stub types get_state() as dict | tuple; legacy=True (the default) returns the tuple
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
            torch.save({"format": FORMAT, **payload}, recorder)  # type: ignore[arg-type]  # torch's stub wants IO[bytes]; torch.save needs only write() and flush()
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
        self.error: OSError | None = None

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


class UnreadableData(Exception):
    """A file of flood's that ``read_data`` cannot read as data: ``reason`` says why, as
    the end of a sentence about the file ("asks to load posix.system, …", "is damaged (…)")."""

    def __init__(self, reason: str, code: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.code = code  # it asks for a function or class: code, not data


def read_data(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: nothing in the file is called or
    imported, a pickle that asks for any other object is refused before it runs. Every
    way the file can fail to be data (random or cut bytes fail in many ways inside the
    unpickler) is an UnreadableData; an OSError with a cause (a missing file, a read
    error) is left as it is. torch's own advice to load with weights_only=False is
    never passed on."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # a pickle that names a function or class to call: code, not data
            raise UnreadableData(f"asks to load {found.group(1)}, which flood never loads", code=True) from None
        detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        raise UnreadableData(f"is damaged ({(detail.group(1) if detail else text)[:100]})") from None
    except Exception as exc:
        if isinstance(exc, OSError) and exc.strerror:
            raise
        raise UnreadableData(f"is damaged ({' '.join(str(exc).split())[:120]})") from None


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint as data only (`read_data`), and check right away that it holds
    every entry a resume uses, of the type it uses (`check_entries`)."""
    try:
        payload = read_data(path)
    except UnreadableData as exc:
        if exc.code:
            raise UnreadableCheckpoint(f"checkpoint {path} is not a flood checkpoint (it {exc.reason}); nothing in it was run") from None
        raise UnreadableCheckpoint(f"checkpoint {path} {exc.reason}") from None
    version = payload.get("format") if isinstance(payload, dict) else None
    if version != FORMAT:
        raise UnreadableCheckpoint(
            f"checkpoint {path} has format {str(version)[:20]!r}, not {FORMAT} (written by another version of flood, or not by flood)"
        )
    problem = check_entries(payload)
    if problem is not None:
        raise UnreadableCheckpoint(f"checkpoint {path} is damaged ({problem})")
    return payload


# ---------------------------------------------------------------------------
# What a resume reads from a checkpoint: each entry and its type, checked as soon as
# the file is read, so that a damaged or hand-edited checkpoint is one line naming the
# entry rather than a KeyError deep in the resume (or a wrong message: a total_steps
# that is a string once blamed changed data files).


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "tensor"
    return "None" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expect(where: str, value: Any, ok: bool, wanted: str) -> str | None:
    return None if ok else f"{where} is a {_kind(value)}, not {wanted}"


def _entry(entries: dict[str, Any], where: str, key: str, check: Callable[[str, Any], str | None], optional: bool = False) -> str | None:
    """``check``'s complaint about ``entries[key]``, or that it is missing."""
    if key not in entries:
        if optional:
            return None
        return f"it has no {key} entry" if not where else f"{where} has no {key} entry"
    return check(f"{where}.{key}" if where else key, entries[key])


def _dict_of(check: Callable[[str, Any], str | None], wanted: str) -> Callable[[str, Any], str | None]:
    def checked(where: str, value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"{where} is a {_kind(value)}, not {wanted}"
        for key, item in value.items():
            problem = check(f"{where}[{key!r}]", item)
            if problem:
                return problem
        return None

    return checked


def _tensor(where: str, value: Any) -> str | None:
    return _expect(where, value, isinstance(value, torch.Tensor), "a tensor")


def _any_dict(where: str, value: Any) -> str | None:
    return _expect(where, value, isinstance(value, dict), "a dict")


def _int(where: str, value: Any) -> str | None:
    return _expect(where, value, _is_int(value), "an int")


def _number(where: str, value: Any) -> str | None:
    return _expect(where, value, _is_number(value), "a number")


def _optimizers(where: str, value: Any) -> str | None:
    if not isinstance(value, list):
        return f"{where} is a {_kind(value)}, not a list"
    for index, state in enumerate(value):
        if not isinstance(state, dict):
            return f"{where}[{index}] is a {_kind(state)}, not a dict"
        problem = _entry(state, f"{where}[{index}]", "state", _any_dict) or _entry(
            state, f"{where}[{index}]", "param_groups", lambda w, v: _expect(w, v, isinstance(v, list), "a list")
        )
        if problem:
            return problem
    return None


def _rng(where: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{where} is a {_kind(value)}, not a dict"

    def python(where: str, state: Any) -> str | None:
        ok = (
            isinstance(state, (tuple, list)) and len(state) == 3 and _is_int(state[0])
            and isinstance(state[1], (tuple, list)) and len(state[1]) == len(random.getstate()[1])
            and all(_is_int(x) for x in state[1]) and (state[2] is None or isinstance(state[2], float))
        )
        return None if ok else f"{where} is not a Python random state"

    def cpu(where: str, state: Any) -> str | None:
        ok = isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.shape == torch.get_rng_state().shape
        return None if ok else f"{where} is not a torch random state"

    def numpy(where: str, state: Any) -> str | None:
        ok = (
            isinstance(state, (tuple, list)) and len(state) == 5 and state[0] == "MT19937"
            and isinstance(state[1], torch.Tensor) and state[1].shape == (624,) and not state[1].is_floating_point()
            and _is_int(state[2]) and _is_int(state[3]) and _is_number(state[4])
        )
        return None if ok else f"{where} is not a numpy random state"

    def cuda(where: str, state: Any) -> str | None:
        ok = isinstance(state, (tuple, list)) and all(isinstance(s, torch.Tensor) for s in state)
        return None if ok else f"{where} is not a list of CUDA random states"

    return (
        _entry(value, where, "python", python) or _entry(value, where, "torch", cpu)
        or _entry(value, where, "numpy", numpy, optional=True) or _entry(value, where, "cuda", cuda, optional=True)
    )


INTERVAL_TENSORS = ("loss_sum", "objective_sum", "correct")  # and "ascent", or "ascent_steps" before it


def _interval(where: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{where} is a {_kind(value)}, not a dict"
    tensors = INTERVAL_TENSORS + (("ascent",) if "ascent" in value or "ascent_steps" not in value else ("ascent_steps",))
    for key in tensors:
        if problem := _entry(value, where, key, _tensor):
            return problem
    for key in ("examples", "steps", "skipped"):
        if problem := _entry(value, where, key, _int):
            return problem
    return _entry(value, where, "ascent_of", _number, optional="ascent" not in value)


def _processes(where: str, value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"{where} is a {_kind(value)}{' (empty)' if isinstance(value, list) else ''}, not a list of each process's state"
    for index, state in enumerate(value):
        item = f"{where}[{index}]"
        if not isinstance(state, dict):
            return f"{item} is a {_kind(state)}, not a dict"
        if problem := _entry(state, item, "rng", _rng) or _entry(state, item, "interval", _interval):
            return problem
    return None


def _entries(checks: dict[str, Callable[[str, Any], str | None]], optional: tuple[str, ...] = ()) -> Callable[[str, Any], str | None]:
    """A dict with exactly these entries (those named in ``optional`` may be absent), each passing its check."""

    def checked(where: str, value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"{where} is a {_kind(value)}, not a dict"
        for key, check in checks.items():
            if problem := _entry(value, where, key, check, key in optional):
                return problem
        unknown = sorted(str(key) for key in value if key not in checks)
        return f"{where} has an unknown entry {unknown[0][:40]!r}" if unknown else None

    return checked


def _optional_int(where: str, value: Any) -> str | None:
    return None if value is None else _int(where, value)


_early_stopping = _entries({"best": _number, "waiting": _int, "stopped_at": _optional_int})

_progress = _entries(
    {
        "step": _int, "epoch": _int, "steps_in_epoch": _int, "rows_written": _int, "elapsed_before": _number,
        "best": _entries({"val_loss": _number, "epoch": _number, "step": _int, "val_accuracy": _number}),
        "best_accuracy": _entries({"val_accuracy": _number, "epoch": _number, "step": _int}),
        # train.early_stopping's state: None without it; absent from checkpoints before 2026-12-04
        "early_stopping": lambda where, value: None if value is None else _early_stopping(where, value),
    },
    optional=("early_stopping",),
)


def _optional_dict(where: str, value: Any) -> str | None:
    return _expect(where, value, value is None or isinstance(value, dict), "a dict or None")


def _fingerprints(where: str, value: Any) -> str | None:
    if value is None:
        return None
    return _dict_of(lambda w, v: _expect(w, v, isinstance(v, str), "a str"), "a dict or None")(where, value)


# Each top-level entry a resume reads, in the order it reads them (train.resume_training,
# Trainer.reopen_run); "data" and "scaler" may be absent (checkpoints before 2026-12-03
# hold no data fingerprints; fp32 runs have no scaler).
ENTRIES: dict[str, tuple[Callable[[str, Any], str | None], bool]] = {
    "experiment": (_any_dict, False),
    "num_processes": (_int, False),
    "total_steps": (_int, False),
    "data": (_fingerprints, True),
    "model": (_dict_of(_tensor, "a dict of tensors"), False),
    "optimizers": (_optimizers, False),
    "scaler": (_optional_dict, True),
    "processes": (_processes, False),
    "progress": (_progress, False),
}


def check_entries(payload: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's entries ("it has no optimizers entry",
    "total_steps is a str, not an int"), or None when a resume can read each of them."""
    for key, (check, optional) in ENTRIES.items():
        if problem := _entry(payload, "", key, check, optional):
            return problem
    count, processes = payload["num_processes"], payload["processes"]
    if count != len(processes):
        return f"num_processes is {count} but processes holds {len(processes)} state(s)"
    return None


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
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._done: Callable[[], None] | None = None

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
        with contextlib.suppress(Exception):
            self.wait()
