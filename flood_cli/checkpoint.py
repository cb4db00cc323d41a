"""Training checkpoints: everything needed for a resumed run to give the same numbers
as one that never stopped, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

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
