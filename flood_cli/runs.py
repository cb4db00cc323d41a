"""The run folder: what a run leaves behind, written so that nothing is ever lost.

    <out>/<name>/
      config.yaml    resolved config + meta (package versions, start time)
      metrics.csv    one row per evaluation, flushed as it is written
      summary.json   status (running|completed|failed|interrupted), best/final figures
      best_model     optional, Hugging Face save_pretrained format: a link to the
                     hidden folder of the latest best model, swapped atomically; the
                     folder before it stays (.best_model.previous) until the next swap

This module must stay free of torch: `flood compare` reads the same files.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Optional

import yaml

from flood_cli.errors import FloodError

METRICS_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_objective",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "best_val_loss",
    "lr",
    "flood_active",
    "val_loss_top10_share",
    "val_ece",
    "val_confidence",
    "val_confident_wrong",
    "skipped_steps",
    "elapsed_s",
)
TEST_COLUMNS = ("test_loss", "test_accuracy")
TIME_COLUMNS = ("elapsed_s",)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
BEST_MODEL_DIR = "best_model"
# The best model before the current one, kept until the next swap for readers still inside it.
PREVIOUS_BEST_LINK = ".best_model.previous"
STAGING_LINK = ".best_model.link.tmp"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import, while the process has one thread: reading the umask means setting
# it, and checkpoints are written from a background thread while the loop writes too.
_UMASK = _read_umask()


def make_temp_file(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path``, with the permissions a plain open would give
    (mkstemp's are 0600, which would hide results from a group sharing the runs)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def atomic_write(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Write a file so that readers, and a process killed at any moment, see the old
    or the new content, never half of it: temporary file, fsync, rename."""
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


def describe_model(model: dict[str, Any]) -> str:
    """A config's model section in a few characters, as run labels show it."""
    tiny = model.get("tiny")
    if isinstance(tiny, dict):
        return f"tiny-bert(L{tiny.get('num_layers')},H{tiny.get('hidden_size')},A{tiny.get('num_heads')})"
    return str(model.get("name_or_path") or "?")


def describe_data(data: dict[str, Any]) -> str:
    """A config's data section in a few characters: the dataset, or the training file's name."""
    if data.get("dataset"):
        return str(data["dataset"]) + (f"/{data['subset']}" if data.get("subset") else "")
    if data.get("train_file"):
        return Path(str(data["train_file"])).name
    return "?"


def default_run_name(mode: str, lr: float, seed: int, b: Optional[float] = None, ascent_lr: Optional[float] = None) -> str:
    parts = [mode]
    if b is not None:
        parts.append(f"b{b:g}")
    parts.append(f"lr{lr:g}")
    if ascent_lr is not None:
        parts.append(f"alr{ascent_lr:g}")
    parts.append(f"s{seed}")
    parts.append(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return "-".join(parts)


def check_writable(out_dir: Path) -> None:
    """Fail before any training if the output folder cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FloodError(f"cannot create output folder {out_dir}: {exc.strerror or exc}; pass a writable --out") from None
    if not out_dir.is_dir():
        raise FloodError(f"output path {out_dir} is not a folder; pass a folder with --out")
    try:
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".flood-write-check-"):
            pass
    except OSError as exc:
        raise FloodError(f"output folder {out_dir} is not writable: {exc.strerror or exc}; pass a writable --out") from None


class RunDir:
    """One run's folder. Created with an atomic mkdir, so two runs never share one."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.time()
        self._metrics_handle = None
        self._metrics_writer: Optional[csv.DictWriter] = None
        self._lock_fd: Optional[int] = None
        self.summary: dict[str, Any] = {}

    @staticmethod
    def name_taken(path: Path) -> FloodError:
        return FloodError(f"run folder {path} already exists; pass another --name (runs are never overwritten)")

    @classmethod
    def create(cls, out_dir: Path, name: Optional[str], default_name: str) -> "RunDir":
        """Claim a new run folder atomically (run_training has checked out_dir is writable)."""
        if name is not None:
            path = out_dir / name
            try:
                path.mkdir()
            except FileExistsError:
                raise cls.name_taken(path) from None
            return cls(path)
        for attempt in range(1, 1000):
            path = out_dir / (default_name if attempt == 1 else f"{default_name}-{attempt}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise FloodError(f"could not find a free run name under {out_dir}; pass --name")

    def lock(self) -> None:
        """Hold an exclusive lock on the folder while training: a second `flood train
        --resume` of the same run is refused. The kernel drops it if the process dies."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FloodError(f"run {self.path} is being trained by another flood process; wait for it to stop") from None
        self._lock_fd = fd
        # Locked: no other flood process writes here. What a killed one left half done goes.
        self.tidy_best_models()

    def discard(self) -> None:
        """Remove a folder this process created but could not set up as a run."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- config -------------------------------------------------------------
    def write_config(self, experiment: dict[str, Any], meta: dict[str, Any]) -> None:
        document = dict(experiment)
        document["meta"] = meta
        atomic_write_text(self.path / CONFIG_FILE, yaml.safe_dump(document, sort_keys=False))

    # -- metrics ------------------------------------------------------------
    def open_metrics(self, columns: Iterable[str]) -> None:
        handle = open(self.path / METRICS_FILE, "w", newline="", encoding="utf-8")
        self._metrics_handle = handle
        self._metrics_writer = _metrics_writer(handle, columns)
        self._metrics_writer.writeheader()
        handle.flush()

    def reopen_metrics(self, columns: Iterable[str], keep_rows: int) -> list[dict[str, Any]]:
        """Keep the header and the first ``keep_rows`` rows (those the checkpoint knows
        of; a row written after it is dropped and will be written again), then append."""
        path = self.path / METRICS_FILE
        lines = path.read_bytes().decode("utf-8").splitlines(keepends=True) if path.exists() else []
        header = ",".join(columns) + "\n"
        if lines and lines[0] != header:
            raise FloodError(f"{path} has other columns than this run writes; it cannot be resumed")
        kept = lines[1 : 1 + keep_rows]
        if len(kept) < keep_rows:
            raise FloodError(f"{path} has {len(kept)} rows but the checkpoint expects {keep_rows}; it cannot be resumed")
        atomic_write_text(path, header + "".join(kept))
        handle = open(path, "a", newline="", encoding="utf-8")
        self._metrics_handle = handle
        self._metrics_writer = _metrics_writer(handle, columns)
        return read_metrics(path)

    def check_intact(self) -> None:
        """Fail if metrics.csv is no longer the file this run writes (the folder, or its
        contents, deleted or replaced while training): rows written to an unlinked file
        would be lost while the run went on to report success."""
        assert self._metrics_handle is not None
        try:
            intact = os.stat(self.path / METRICS_FILE).st_ino == os.fstat(self._metrics_handle.fileno()).st_ino
        except FileNotFoundError:
            intact = False
        if not intact:
            raise FloodError(
                f"run folder {self.path} lost its {METRICS_FILE} while training (deleted or replaced by another "
                "program); the run stopped: start it again under a new name"
            )

    def append_metrics(self, row: dict[str, Any]) -> None:
        assert self._metrics_writer is not None and self._metrics_handle is not None
        self.check_intact()
        self._metrics_writer.writerow({k: _format_value(v) for k, v in row.items()})
        # Flushed row by row: a crash or kill later keeps every row written so far.
        self._metrics_handle.flush()
        os.fsync(self._metrics_handle.fileno())

    # -- best model -----------------------------------------------------------
    def replace_best_model(self, write: Callable[[Path], None]) -> None:
        """Make ``best_model`` the folder that ``write(folder)`` fills, atomically.

        ``best_model`` is a relative symbolic link to a hidden folder beside it. A new best
        is written to a fresh folder, then a new link is renamed over the old one: a
        reader (or a process killed at any moment) always finds a whole model under
        ``best_model``, the old one or the new one.

        The folder the link pointed to until now is kept until the next swap (the hidden
        link ``.best_model.previous`` names it), so a reader already inside it, one that
        resolved the link before this swap, can still read every file of it. Any other
        hidden ``.best_model-*`` folder is removed: at most two exist after a swap."""
        fresh = Path(tempfile.mkdtemp(prefix=f".{BEST_MODEL_DIR}-", dir=self.path))
        os.chmod(fresh, 0o777 & ~_UMASK)
        write(fresh)
        link = self.path / BEST_MODEL_DIR
        previous: Optional[str] = None
        if link.is_symlink():
            previous = os.readlink(link)
        elif link.is_dir():  # a real folder (written by hand): moved aside, kept as the previous one
            previous = f".{BEST_MODEL_DIR}-replaced-{time.time_ns()}"
            link.rename(self.path / previous)
        if previous is not None and (self.path / previous).is_dir():
            # First, so that a kill between the two renames keeps the folder readers may be in.
            self._point(self.path / PREVIOUS_BEST_LINK, previous)
        self._point(link, fresh.name)
        self.tidy_best_models()

    def _point(self, link: Path, target: str) -> None:
        """Make ``link`` a relative link to ``target``, atomically (a new link renamed over it)."""
        staging = self.path / STAGING_LINK
        staging.unlink(missing_ok=True)
        os.symlink(target, staging)
        os.replace(staging, link)

    def tidy_best_models(self) -> None:
        """Remove the hidden best-model folders neither ``best_model`` nor
        ``.best_model.previous`` points to (left by an earlier swap, or half written by a
        process killed while writing one) and a staging link left by a kill."""
        kept = {os.readlink(link) for link in (self.path / BEST_MODEL_DIR, self.path / PREVIOUS_BEST_LINK) if link.is_symlink()}
        (self.path / STAGING_LINK).unlink(missing_ok=True)
        for old in self.path.glob(f".{BEST_MODEL_DIR}-*"):
            if old.name not in kept:
                shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        if self._metrics_handle is not None:
            self._metrics_handle.close()
            self._metrics_handle = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- summary ------------------------------------------------------------
    def load_summary(self) -> dict[str, Any]:
        try:
            self.summary = json.loads((self.path / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.summary = {}
        return self.summary

    def write_summary(self, **fields: Any) -> None:
        self.summary.update(fields)
        self.summary["wall_time_s"] = round(time.time() - self.started, 3)
        self.summary["updated_at"] = now_iso()
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(self.summary, indent=2, allow_nan=True) + "\n")


def _metrics_writer(handle: IO[str], columns: Iterable[str]) -> csv.DictWriter:
    # "\n" line ends, whether the file is new or resumed (csv's default is "\r\n").
    return csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")


def _format_value(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        return f"{value:.8g}"
    return "" if value is None else value


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics.csv into rows of floats (empty cells become None)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = []
        for raw in csv.DictReader(handle):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in raw.items()})
        return rows

