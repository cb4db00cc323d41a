"""The sweep's Optuna storage: a journal file or a database URL (its password kept in
this process), the journal's repair, loading a study, and waiting out a storage that
does not answer."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flood_cli.core.errors import FloodError
from flood_cli.sweep.spec import SweepSpec, _first_line


def _env_seconds(name: str, default: float) -> float:
    """A duration from the environment (tests shorten the heartbeat and grace period;
    every worker of a sweep must see the same values), else the default."""
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


STORAGE_RETRY_S = _env_seconds("FLOOD_SWEEP_STORAGE_RETRY_S", 120.0)  # how long a worker waits for a storage that stopped answering
DIE_AFTER_WRITE = "FLOOD_SWEEP_DIE_AFTER_WRITE"  # tests: os._exit after the k-th queue write

# A password given in a storage URL is used by this process (and handed to the workers it
# starts, in their environment), never stored (sweep.yaml, the study's attributes) nor
# printed. Elsewhere the driver finds it itself (PGPASSWORD, ~/.pgpass for PostgreSQL).
_PASSWORDS: dict[str, str] = {}
PASSWORD_ENV = "FLOOD_SWEEP_STORAGE_PASSWORD"
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that accepts and never answers fails in this time
_URL_PASSWORD = re.compile(r"(?P<head>[\w+]+://[^:/]*):(?P<password>[^@]*)@")  # SQLAlchemy's own reading


def split_password(url: str) -> tuple[str, str | None]:
    """A database URL without its password (user:PASSWORD@ or ?password=), and the password."""
    from urllib.parse import parse_qsl, unquote, urlencode

    if "://" not in url:
        return url, None
    password = None
    match = _URL_PASSWORD.match(url)
    if match:
        password = unquote(match["password"])
        url = match["head"] + "@" + url[match.end():]
    base, sep, query = url.partition("?")
    if sep:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(key, value) for key, value in pairs if key != "password"]
        if len(kept) != len(pairs):
            password = password or next(value for key, value in pairs if key == "password")
            url = base + ("?" + urlencode(kept) if kept else "")
    return url, password


def public_url(url: str) -> str:
    """The URL as it may be stored and printed: without its password, which this
    process keeps for its own connections and its workers'."""
    url, password = split_password(url)
    if password:
        _PASSWORDS[url] = password
    return url


def masked(text: str) -> str:
    """``text`` with every password this process was given replaced by ***."""
    for password in _PASSWORDS.values():
        text = text.replace(f":{password}@", ":***@")
        if len(password) >= 4:
            text = text.replace(password, "***")
    return text


def worker_env(storage: str) -> dict[str, str]:
    """What a worker started here needs in its environment to reach the storage."""
    password = _PASSWORDS.get(split_password(storage)[0]) if storage else None
    return {PASSWORD_ENV: password} if password else {}


def open_storage(url: str) -> Any:
    """A journal file (a path) or a database URL (postgresql://, mysql://, sqlite:///).
    A password in the URL is passed to the driver apart from it; without one, the
    driver's own sources are used (PGPASSWORD, ~/.pgpass), or the one a sweep handed its
    workers."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" in url:
        url = public_url(url)
        password = _PASSWORDS.get(url) or os.environ.get(PASSWORD_ENV)
        connect = url
        connect_args: dict[str, Any] = {}
        if url.startswith(("postgresql://", "postgresql+")):
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if url.startswith("postgresql://"):
            # The driver flood installs (pip install 'flood-cli[postgres]'): psycopg 3,
            # which SQLAlchemy 2.0 would not pick for a bare postgresql:// URL.
            connect = "postgresql+psycopg://" + url[len("postgresql://"):]
        if password:
            connect_args["password"] = password
        try:
            return optuna.storages.RDBStorage(connect, engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args})
        except Exception as exc:
            raise FloodError(f"cannot open the storage {url}: {masked(_first_line(exc))}; check the URL and that the server runs") from None
    _repair_journal(Path(url))
    try:
        storage = JournalStorage(JournalFileBackend(url))
    except (ValueError, KeyError, AssertionError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise FloodError(_damaged_journal(Path(url), exc)) from None
    storage._flood_journal = url  # type: ignore[attr-defined]
    return storage


def _last_line(handle: Any, size: int) -> tuple[int, bytes]:
    """Where the journal's last line starts, and the line (with its newline, if any)."""
    end, chunk = size, 1 << 16
    tail = b""
    while end > 0:
        start = max(0, end - chunk)
        handle.seek(start)
        tail = handle.read(end - start) + tail
        end = start
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return end + cut + 1, tail[cut + 1:]
    return 0, tail


def _bad_line(line: bytes) -> bool:
    """Whether a journal line is no whole Optuna operation (cut, or not JSON)."""
    if not line.endswith(b"\n"):
        return True
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:
        return True


def _repair_journal(path: Path) -> None:
    """A journal whose last line is cut (a full disk or a kill in the middle of a write)
    is kept readable: the cut line is copied aside to <journal>.cut-<time> and cut off
    before anything is appended to it (Optuna's reader skips such a line, but its next
    append would glue an operation onto it and make every later read fail). Done under
    Optuna's own journal lock, so no write in progress is taken for a cut one."""
    from optuna.storages.journal import JournalFileSymlinkLock

    try:
        size = path.stat().st_size
        if size == 0:
            return
        with open(path, "rb") as handle:
            start, line = _last_line(handle, size)
        if not _bad_line(line):
            return
    except OSError:
        return  # Optuna says what is wrong with the file
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "r+b") as handle:
            size = os.fstat(handle.fileno()).st_size
            start, line = _last_line(handle, size)
            if start == 0 or not _bad_line(line):
                return  # written meanwhile, or no whole line before it: _damaged_journal says so
            aside = path.with_name(f"{path.name}.cut-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            aside.write_bytes(line)
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        lock.release()
    print(
        f"{path}: its last line was cut ({len(line)} bytes of an operation a full disk or a kill left half written); "
        f"kept aside in {aside.name} and cut off (runs it leaves without a record are queued again)",
        file=sys.stderr,
        flush=True,
    )


def _damaged_journal(path: Path, exc: BaseException) -> str:
    """One line for a journal Optuna cannot replay: which line, and what to do."""
    number, total = 0, 0
    try:
        with open(path, "rb") as handle:
            for total, line in enumerate(handle, start=1):
                if not number and (_bad_line(line) or "op_code" not in json.loads(line)):
                    number = total
    except (OSError, ValueError):
        pass
    where = f"line {number} of {total}" if number else f"an operation Optuna cannot replay ({_first_line(exc)})"
    keep = f"keep its first {number - 1} line(s) (head -n {number - 1}) and resume: " if number > 1 else ""
    return (
        f"the sweep journal {path} is damaged at {where}; restore it from a backup, or {keep}"
        + ("runs without a record are queued again and completed ones read back" if number > 1 else "start a new sweep")
    )


def load_study(storage: Any, name: str, prune: bool = False) -> Any:
    import optuna

    # Pruners are not stored with a study: every worker of a pruned search passes its own.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if prune else None
    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        journal = getattr(storage, "_flood_journal", None)
        if journal is not None and not storage.get_all_studies():
            raise FloodError(
                f"the sweep journal {journal} holds no study (it is empty or was replaced); restore it from a backup, "
                f"or start a new sweep"
            ) from None
        raise FloodError(f"there is no study {name!r} in the storage; check --study (flood sweep prints it when it starts)") from None


_writes = [0, -1]  # queue writes so far, and DIE_AFTER_WRITE (-1: not read yet)


def _wrote() -> None:
    """Count one write of the queue protocol; the test hook FLOOD_SWEEP_DIE_AFTER_WRITE=k
    (read once) kills the process right after the k-th, as a crash there would."""
    if _writes[1] < 0:
        text = os.environ.get(DIE_AFTER_WRITE, "")
        _writes[1] = int(text) if text.isdigit() else 0
    _writes[0] += 1
    if _writes[1] and _writes[0] == _writes[1]:
        os._exit(86)


def _storage_error(exc: BaseException) -> bool:
    """An error of the storage's connection or disk (worth waiting out), as opposed to
    one of the trial (a finished trial, a bad value), which is not retried."""
    from optuna.exceptions import StorageInternalError

    if isinstance(exc, (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return False  # not transient: said as it is
    if isinstance(exc, (StorageInternalError, OSError)):
        return True
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError

        return isinstance(exc, (OperationalError, DBAPIError)) and not isinstance(exc, _integrity_errors())
    except ImportError:
        return False


def _integrity_errors() -> tuple:
    from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

    return (IntegrityError, DataError, ProgrammingError)


def _retrying(spec: SweepSpec, what: str, call: Callable[[], Any]) -> Any:
    """``call()``, tried again for up to STORAGE_RETRY_S while the storage does not
    answer (a database restarting, a network partition, a full disk), each failure
    said in one line; after that the worker stops with one line (its runs are queued
    again by --resume: a run trained but not yet told is read back, never retrained)."""
    started, wait, said = time.monotonic(), 1.0, False
    while True:
        try:
            result = call()
        except Exception as exc:
            if not _storage_error(exc):
                raise
            waited = time.monotonic() - started
            reason = f"{type(exc).__name__}: {masked(_first_line(exc))}"
            if waited >= STORAGE_RETRY_S:
                raise FloodError(
                    f"the sweep's storage {public_url(spec.storage_url)} did not answer for {waited:.0f} s ({reason}); "
                    f"this worker stops: when it is back, run flood sweep --resume {spec.folder}"
                ) from None
            print(f"could not {what}: the storage did not answer ({reason}); trying again for up to {STORAGE_RETRY_S - waited:.0f} s", file=sys.stderr, flush=True)
            said = True
            time.sleep(min(wait, max(0.0, STORAGE_RETRY_S - waited)))
            wait = min(wait * 2, 15.0)
            continue
        if said:
            print(f"the storage answers again ({what})", file=sys.stderr, flush=True)
        return result
