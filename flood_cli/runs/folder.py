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

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import yaml

from flood_cli.config.basics import MAX_CONFIG_BYTES
from flood_cli.core.errors import FloodError, shown

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
BEST_MODEL_DIR = "best_model"

# The most flood reads of each run file (`flood compare`, `flood train --resume`, a
# sweep's runs). Generous for real runs: metrics.csv has a row of about 200 bytes per
# evaluation (64 MB: some 300,000 evaluations), config.yaml and summary.json have a few
# kB. A bigger file, or one that is not a regular file (a named pipe, /dev/zero), is
# refused before it is read: a run folder from someone else cannot stall the reader.
MAX_METRICS_BYTES = 64 * 2**20
MAX_SUMMARY_BYTES = 2**20
# The best model before the current one, kept until the next swap for readers still inside it.
PREVIOUS_BEST_LINK = ".best_model.previous"
STAGING_LINK = ".best_model.link.tmp"


class RunFileRefused(FloodError):
    """A run file flood does not read (see MAX_METRICS_BYTES): not a regular file, or
    bigger than its cap. ``problem`` names the file and says why; the message adds the
    folder and what to do. Not an OSError or ValueError on purpose: code that takes an
    unreadable or corrupt run file for a missing one (a resume, a sweep) says this one."""

    def __init__(self, path: Path, problem: str):
        super().__init__(
            f"{shown(str(path.parent), 200)}: {problem}; put the file the run wrote in its place, "
            "or start the run again under a new name"
        )
        self.problem = problem


def run_file_limit(name: str) -> int:
    """The cap on a run file, by its name (config.yaml's for any other file)."""
    return {METRICS_FILE: MAX_METRICS_BYTES, SUMMARY_FILE: MAX_SUMMARY_BYTES}.get(name, MAX_CONFIG_BYTES)


def read_run_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a run file, read only if it is a regular file of at most ``limit``
    bytes (default: its cap, `run_file_limit`); RunFileRefused otherwise. Never blocks
    on a named pipe and never reads past the cap (a link to /dev/zero is a device).
    A missing or unreadable file raises OSError as open() would."""
    limit = run_file_limit(path.name) if limit is None else limit
    _check_regular(path, os.stat(path).st_mode)  # before opening: a device is never opened
    # Non-blocking: a named pipe put there since the stat opens at once, and fstat says so.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        _check_regular(path, status.st_mode)
        if status.st_size > limit:
            raise _too_big(path, limit, status.st_size)
        chunks: list[bytes] = []
        read = 0
        while read <= limit:  # the file may grow while it is read: at most one byte over
            chunk = os.read(fd, min(limit + 1 - read, 2**20))
            if not chunk:
                break
            chunks.append(chunk)
            read += len(chunk)
        if read > limit:  # grew while read, or a file that says size 0 (/proc)
            raise _too_big(path, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "a folder"
    elif stat.S_ISFIFO(mode):
        kind = "a named pipe"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    else:
        kind = "not a plain file"
    with contextlib.suppress(OSError):  # not a link
        kind = f"a link to {shown(os.readlink(path))}, {kind}"
    raise RunFileRefused(path, f"{path.name} is not a regular file ({kind})")


def _too_big(path: Path, limit: int, size: int | None = None) -> RunFileRefused:
    how_big = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return RunFileRefused(path, f"{path.name} is too large to read ({how_big}; flood reads at most {_mib(limit)})")


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size:,} bytes"


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


def atomic_write(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """Write a file so that readers, and a process killed at any moment, see the old
    or the new content, never half of it: temporary file, fsync, rename."""
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


def default_run_name(mode: str, lr: float, seed: int, b: float | None = None, ascent_lr: float | None = None) -> str:
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
        self._metrics_handle: IO[str] | None = None
        self._metrics_writer: csv.DictWriter | None = None
        self._lock_fd: int | None = None
        self.summary: dict[str, Any] = {}

    @staticmethod
    def name_taken(path: Path) -> FloodError:
        return FloodError(f"run folder {path} already exists; pass another --name (runs are never overwritten)")

    @classmethod
    def create(cls, out_dir: Path, name: str | None, default_name: str) -> RunDir:
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
        handle = open(self.path / METRICS_FILE, "w", newline="", encoding="utf-8")  # noqa: SIM115 (held open while the run writes rows; closed by close())
        self._metrics_handle = handle
        self._metrics_writer = _metrics_writer(handle, columns)
        self._metrics_writer.writeheader()
        handle.flush()

    def reopen_metrics(self, columns: Iterable[str], keep_rows: int) -> list[dict[str, Any]]:
        """Keep the header and the first ``keep_rows`` rows (those the checkpoint knows
        of; a row written after it is dropped and will be written again), then append."""
        path = self.path / METRICS_FILE
        lines = read_run_file(path).decode("utf-8").splitlines(keepends=True) if path.exists() else []
        header = ",".join(columns) + "\n"
        if lines and lines[0] != header:
            raise FloodError(f"{path} has other columns than this run writes; it cannot be resumed")
        kept = lines[1 : 1 + keep_rows]
        if len(kept) < keep_rows:
            raise FloodError(f"{path} has {len(kept)} rows but the checkpoint expects {keep_rows}; it cannot be resumed")
        atomic_write_text(path, header + "".join(kept))
        handle = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (held open while the run writes rows; closed by close())
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
        previous: str | None = None
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
            self.summary = json.loads(read_run_file(self.path / SUMMARY_FILE).decode("utf-8"))
        except (OSError, ValueError):  # missing or corrupt; RunFileRefused is raised
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
    """Read a metrics.csv into rows of floats (empty cells become None). Raises
    RunFileRefused for a file that is not regular or is over MAX_METRICS_BYTES."""
    text = read_run_file(path).decode("utf-8")
    rows = []
    for raw in csv.DictReader(io.StringIO(text, newline="")):
        rows.append({k: (float(v) if v not in ("", None) else None) for k, v in raw.items()})
    return rows

