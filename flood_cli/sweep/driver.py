"""`flood sweep`: the flood level (or any key) over seeds, on Optuna.

A sweep is a folder::

    <out>/<name>/
      sweep.yaml      what is swept: the base config, the grid or search, the seeds, the storage
      study.journal   Optuna's journal storage (default; or a database given by --storage)
      runs/           ordinary run folders, one per setting and seed: `flood compare` reads them
      workers/        each worker process's log
      results.md      the grouped table, written at the end (and by `flood sweep --report`)
      b-curve.png     best validation loss and accuracy against b (ascent_lr-curve.png likewise)

A grid is enumerated up front: every (setting, seed) is one Optuna trial, enqueued as
WAITING, and a worker claims one by moving it to RUNNING through the storage, which
lets exactly one claimant win (a row lock in a database, the order of the journal's
log in a file). Optuna's GridSampler is not used: it can hand one grid point to two
concurrent workers. A search (--search) asks Optuna's TPE sampler for settings, each
trial running every seed and reporting their mean; its baseline runs are a grid of
their own in a second study.

A worker owns its run by a lease: the claimed trial, renewed by a heartbeat, and the run
folder's lock. A RUNNING trial whose worker is gone (its process no longer exists on
this host, or its heartbeat was seen unchanged for the grace period by the observer's
own clock) is failed and enqueued again with the same run; the new claimant resumes the
run folder from its checkpoint, as `flood train --resume` does, once the folder's lock is
let go. A worker that finds its lease taken, or could not renew it for half the grace
period, stops before its next write (:class:`Heartbeat`). A completed run is never run
again.

The runs of sweep.yaml are the truth and trials are claims on them: a run's outcome is
its latest trial's, and :func:`reconcile` (run by --resume and by every worker when it
starts) queues again any run that has no completed result and no live owner, so that a
crash between two writes of the queue never loses a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from flood_cli.core import safe_yaml
from flood_cli.core.errors import FloodError, RunPruned, shown_repr

SPEC_FILE = "sweep.yaml"
JOURNAL_FILE = "study.journal"
RUNS_DIR = "runs"
WORKERS_DIR = "workers"
RESULTS_FILE = "results.md"

# The keys a flag sweeps, and how a run name shows them.
FLAG_KEYS = {"b": "train.b", "lr": "train.lr", "ascent_lr": "train.ascent_lr"}
SHORT_NAMES = {"train.b": "b", "train.lr": "lr", "train.ascent_lr": "alr", "train.mode": ""}
# Keys that only make sense in one mode: a baseline setting drops them.
MODE_KEYS_OF = {
    "flooding": ("train.b",),
    "iflood": ("train.b",),
    "alternate": ("train.ascent_lr", "train.ascent_optimizer"),
    "adaflood": ("train.adaflood",),
    "backstitch": ("train.backstitch",),
    "gradnorm": ("train.gradnorm",),
}
MODE_KEYS = tuple(dict.fromkeys(key for keys in MODE_KEYS_OF.values() for key in keys))
# What a run of one mode must not carry from a base config of another (reset to defaults).
CLEARED = {"train.b": None, "train.ascent_lr": None, "train.adaflood": None, "train.backstitch": None, "train.gradnorm": None}
CURVE_KEYS = ("train.b", "train.ascent_lr")

# Bounds on what one sweep enqueues (each run is one Optuna trial, a few ms to enqueue).
MAX_SEEDS = 1000
MAX_SETTINGS = 1000
MAX_SETTINGS_BYTES = 512_000
MAX_RUNS = 5000
MAX_SPEC_BYTES = 4 * 2**20  # sweep.yaml: its settings (at most MAX_SETTINGS_BYTES) and the base config



def _env_seconds(name: str, default: float) -> float:
    """A duration from the environment (tests shorten the heartbeat and grace period;
    every worker of a sweep must see the same values), else the default."""
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


# A worker renews its lease on its trial every HEARTBEAT_S. Another process takes a
# trial as stale when it has seen its heartbeat unchanged for GRACE_S by its own clock;
# the owner stops itself when it could not renew for GRACE_S / 2 by its own clock. Only
# durations measured on one machine are compared, so clock skew cannot make two owners.
HEARTBEAT_S = _env_seconds("FLOOD_SWEEP_HEARTBEAT_S", 10.0)
GRACE_S = _env_seconds("FLOOD_SWEEP_GRACE_S", 60.0)
STORAGE_RETRY_S = _env_seconds("FLOOD_SWEEP_STORAGE_RETRY_S", 120.0)  # how long a worker waits for a storage that stopped answering
FAULTS = "FLOOD_SWEEP_FAULTS"  # tests: a folder whose file heartbeat-fails-<pid> makes that worker's heartbeats fail
WRITER_LOG = "FLOOD_SWEEP_WRITER_LOG"  # tests: an append-only log of which process wrote which run's rows
LOCK_POLL_S = 5.0  # how often a worker looks whether a locked run folder was let go
QUEUE_LOCK = ".queue.lock"  # in the sweep folder: one process at a time changes the queue
DIE_AFTER_WRITE = "FLOOD_SWEEP_DIE_AFTER_WRITE"  # tests: os._exit after the k-th queue write


# ---------------------------------------------------------------------------
# What is swept


def _mode_key(key: str) -> str | None:
    """The mode-specific key that ``key`` is or lies in (train.gradnorm.r -> train.gradnorm)."""
    return next((k for k in MODE_KEYS if key == k or key.startswith(k + ".")), None)


def _mode_of(key: str) -> str:
    owner = _mode_key(key)
    return next(mode for mode, keys in MODE_KEYS_OF.items() if owner in keys)


def parse_values(text: str, what: str) -> list[Any]:
    """``0,0.05,0.1`` -> [0.0, 0.05, 0.1]; each value read as YAML (1e-5, true, null)."""
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise FloodError(f"{what} {text!r} has an empty value; give values separated by commas, e.g. 0,0.05,0.1")
        try:
            values.append(safe_yaml.load(item))
        except Exception:
            values.append(item)
    if len(set(map(json.dumps, values))) != len(values):
        raise FloodError(f"{what} {text!r} repeats a value; give each value once")
    return values


_WHOLE_NUMBER = re.compile(r"[0-9]+")


def parse_seeds(text: str) -> list[int]:
    """``5`` -> seeds 1..5; ``1,2,7`` -> those seeds. Plain digits only (Python's int()
    would take ``1_0`` as 10), at most MAX_SEEDS seeds, each a valid train.seed."""
    from flood_cli.config.schema import SEED_MAX

    items = [item.strip() for item in text.split(",")]
    if not all(_WHOLE_NUMBER.fullmatch(item) for item in items):
        raise FloodError(f"--seeds {text!r}: give a number of seeds (5 means seeds 1..5) or a list (1,2,7), in plain digits")
    numbers = [int(item) for item in items]
    if len(numbers) == 1:
        if numbers[0] > MAX_SEEDS:
            raise FloodError(f"--seeds {text!r}: at most {MAX_SEEDS} seeds per setting; give fewer (e.g. --seeds 5)")
        if numbers[0] < 1:
            raise FloodError(f"--seeds {text!r}: give a number of seeds (5 means seeds 1..5) or a list (1,2,7)")
        return list(range(1, numbers[0] + 1))
    if len(numbers) > MAX_SEEDS:
        raise FloodError(f"--seeds {text!r}: at most {MAX_SEEDS} seeds per setting; give fewer")
    if len(set(numbers)) != len(numbers) or any(seed > SEED_MAX for seed in numbers):
        raise FloodError(f"--seeds {text!r}: seeds must be distinct, from 0 to {SEED_MAX}")
    return numbers


@dataclass(frozen=True)
class Range:
    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False  # a whole-number key (train.batch_size): TPE suggests integers


def parse_search(text: str) -> Range:
    """``b=0:0.6`` or ``ascent_lr=1e-6:1e-4:log`` (a key of a section, or b, lr, ascent_lr).
    A key the config holds as a whole number (train.batch_size=8:32) is searched over
    integers, and its bounds must be whole; a key that is no number is refused."""
    name, sep, bounds = text.partition("=")
    parts = bounds.split(":")
    try:
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ValueError
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise FloodError(f"--search {text!r}: expected KEY=LOW:HIGH or KEY=LOW:HIGH:log, e.g. --search b=0:0.6") from None
    log = len(parts) == 3
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high or (log and low <= 0):
        raise FloodError(f"--search {text!r}: LOW must be below HIGH (and above 0 on a log scale)")
    key = FLAG_KEYS.get(name.strip(), name.strip())
    if "." not in key:
        raise FloodError(f"--search {text!r}: {name!r} is not b, lr, ascent_lr or a section.key")
    kinds = _number_kinds(key)
    if kinds == {int}:
        if not (low.is_integer() and high.is_integer()):
            raise FloodError(f"--search {text!r}: {key} is a whole number; give whole bounds, e.g. --search {key}=8:32")
        return Range(key, int(low), int(high), log, integer=True)
    if kinds is not None and not kinds:
        raise FloodError(f"--search {text!r}: {key} is not a number; search a number key, or list its values with --set {key}=A,B")
    return Range(key, low, high, log)


def _number_kinds(key: str) -> set | None:
    """{int}, {float} or set() (no number) for a key of the config; None for a key it
    does not have (validation says so)."""
    from pydantic import BaseModel

    from flood_cli.config.schema import Config

    model: Any = Config
    annotation: Any = None
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = next((a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    args = set(get_args(annotation) or (annotation,))
    return {float} if float in args else {int} if int in args else set()


@functools.lru_cache(maxsize=1)
def _key_order() -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """Each key of the config with its place in the config (sections and keys in the
    order the config declares them), and the last parts that more than one key ends
    with (folds: train.adaflood.folds, data.holdout.folds)."""
    from pydantic import BaseModel

    from flood_cli.config.schema import Config

    places: dict[str, tuple[int, ...]] = {}

    def walk(model: Any, prefix: str, place: tuple[int, ...]) -> None:
        for index, (name, info) in enumerate(model.model_fields.items()):
            places[prefix + name] = (*place, index)
            for arg in (info.annotation, *get_args(info.annotation)):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    walk(arg, f"{prefix}{name}.", (*place, index))

    walk(Config, "", ())
    lasts = [key.rsplit(".", 1)[-1] for key in places]
    return places, frozenset(last for last in lasts if lasts.count(last) > 1)


LAST_KEYS = tuple(FLAG_KEYS.values())  # train.b, train.lr, train.ascent_lr


def _ordered(overrides: dict[str, Any]) -> list[tuple[str, Any]]:
    """The overrides in one order whatever order they were given in: train.mode, the
    other keys in the config's own order, then the flags' keys b, lr, ascent_lr
    (baseline-optimizer=sgd-lr0.2, flooding-b0.1-lr0.001, alternate-lr2e-05-alr1e-06)."""
    places, _ = _key_order()

    def place(item: tuple[str, Any]) -> tuple:
        key = item[0]
        if key == "train.mode":
            return (0,)
        if key in LAST_KEYS:
            return (2, LAST_KEYS.index(key))
        return (1, places.get(key, (1 << 30,)), key)

    return sorted(overrides.items(), key=place)


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: config overrides (dotted keys), the same for every seed.

    Key order never matters: the label, the identity and the run name follow the
    config's order of keys. Values are compared as they are given; a setting made by
    :func:`canonical` holds each value as the validated config does (1e-3 and 0.001 are
    one float, 1 and 1.0 one int of an int key)."""

    overrides: dict[str, Any]

    @property
    def mode(self) -> str:
        return str(self.overrides.get("train.mode", "baseline"))

    def _shown(self) -> list[tuple[str, Any]]:
        return [(key, value) for key, value in _ordered(self.overrides) if key != "train.mode"]

    def label(self) -> str:
        shown = [f"{key.split('.')[-1]}={_value(value)}" for key, value in self._shown()]
        return " ".join([self.mode, *shown])

    def identity(self) -> str:
        """The setting as text: equal for equal settings, whatever their key order."""
        return json.dumps(_ordered(self.overrides), sort_keys=True, default=str)

    def run_name(self, seed: int) -> str:
        """``flooding-b0.1-s3``: readable where the text tells the setting exactly;
        otherwise (a value that needs characters a run name cannot hold, or a name past
        NAME_MAX) the readable part cut short and a hash of the whole setting, so that
        two settings never share a run and the seed is never cut off."""
        from flood_cli.config.schema import NAME_MAX

        _, shared_lasts = _key_order()
        parts, exact = [self.mode], True
        for key, value in self._shown():
            last = key.split(".")[-1]
            short = SHORT_NAMES.get(key, last + "=")
            parts.append(f"{short}{_value(value)}")
            exact = exact and _exact(value) and (key in SHORT_NAMES or last not in shared_lasts)
        readable, seed_part = "-".join(parts), f"-s{seed}"
        if exact and _safe_name(readable) == readable and len(readable) + len(seed_part) <= NAME_MAX:
            return readable + seed_part
        tag = "-h" + hashlib.sha256(self.identity().encode()).hexdigest()[:12]
        return _safe_name(readable)[: NAME_MAX - len(tag) - len(seed_part)] + tag + seed_part


def _value(value: Any) -> str:
    """A value as a run name shows it: a float as %.6g where that reads back as the same
    float (0.1, 2e-05), else in full (0.1000001)."""
    if isinstance(value, float):
        short = f"{value:.6g}"
        return short if float(short) == value else repr(value)
    return str(value)


_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.+@,=]+")


def _exact(value: Any) -> bool:
    """Whether _value(value) tells the value apart from every other value of its key
    (a text with '-' could read as two parts of a name; 'None' as null)."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, str) and bool(_PLAIN_TEXT.fullmatch(value)) and value not in ("None", "True", "False")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._+=@,-" else "_" for c in name)[:200]


# Keys a sweep sets itself for every run: swept or fixed, they would be overwritten.
OWN_KEYS = {
    "train.seed": "each run's seed comes from --seeds; drop {key} and give --seeds (e.g. --seeds 1,2,7)",
    "output.name": "the sweep names each run itself; drop {key}",
    "output.dir": "the sweep keeps its runs in its own runs/ folder (choose where with --out); drop {key}",
}


def refuse_own_keys(keys: Any, where: str) -> None:
    """One line for a key the sweep sets itself (train.seed, output.name, output.dir)."""
    for key in keys:
        if key in OWN_KEYS:
            raise FloodError(f"{where} sets {key}, which a sweep sets itself: " + OWN_KEYS[key].format(key=key))


def read_settings(path: Path) -> list[dict[str, Any]]:
    """A --settings file: a YAML list of settings, each a mapping of dotted config keys
    (train.mode first) to one value, e.g. ``- {train.mode: flooding, train.b: 0.05}``.
    At most MAX_SETTINGS settings (and MAX_SETTINGS_BYTES of text, checked before it
    is read)."""
    try:
        size = path.stat().st_size
        if size > MAX_SETTINGS_BYTES:
            raise FloodError(
                f"--settings file {path} is {human_bytes(size)}; a sweep takes at most {MAX_SETTINGS} settings "
                f"({human_bytes(MAX_SETTINGS_BYTES)}): split it into several sweeps"
            )
        data = safe_yaml.load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FloodError(f"cannot read --settings file {path}: {exc.strerror or exc}; pass an existing YAML file") from None
    except (safe_yaml.RefusedYaml, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FloodError(f"--settings file {path} is not readable YAML ({_first_line(exc)}); fix the file") from None
    if not isinstance(data, list) or not data:
        raise FloodError(f"--settings file {path} must be a list of settings, e.g. - {{train.mode: flooding, train.b: 0.05}}")
    if len(data) > MAX_SETTINGS:
        raise FloodError(f"--settings file {path} lists {len(data)} settings; a sweep takes at most {MAX_SETTINGS}: split it into several sweeps")
    settings = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict) or "train.mode" not in item:
            raise FloodError(f"--settings file {path}: setting {number} must be a mapping with train.mode, e.g. {{train.mode: iflood, train.b: 0.05}}")
        if any(not isinstance(key, str) or "." not in key or isinstance(value, (dict, list)) for key, value in item.items()):
            raise FloodError(f"--settings file {path}: setting {number} needs dotted keys with one value each (train.b: 0.05)")
        refuse_own_keys(item, f"--settings file {path}: setting {number}")
        settings.append({"train.mode": item["train.mode"], **{k: v for k, v in item.items() if k != "train.mode"}})
    return settings


def canonical(spec: SweepSpec, overrides: dict[str, Any]) -> tuple[Setting, str]:
    """The setting with each value as the validated config holds it (1e-3 -> 0.001,
    1.0 -> 1 for an int key, 0 -> 0.0 for a float one), keys in the config's order; and
    the run's whole validated config as text, without its name and seed: two settings
    with the same text are the same experiment."""
    config = config_for(spec, overrides, spec.seeds[0], "probe")
    dumped = config.model_dump(mode="json")
    values = {}
    for key, given in _ordered(overrides):
        node: Any = dumped
        for part in key.split("."):
            node = node.get(part, given) if isinstance(node, dict) else given
        values[key] = node
    dumped["train"].pop("seed", None)
    dumped["output"].pop("name", None)
    return Setting(values), json.dumps(dumped, sort_keys=True)


def _given(setting: Setting) -> str:
    """A setting as given, every value in full: {train.mode: baseline, train.epochs: 1.0}."""
    return "{" + ", ".join(f"{key}: {value!r}" for key, value in _ordered(setting.overrides)) + "}"


def distinct_settings(spec: SweepSpec, settings: list[Setting], what: str, fix: str = "keep one") -> list[tuple[Setting, str]]:
    """Each setting canonical, with its experiment text; two that are one experiment
    (the same values spelt apart, 1 and 1.0 of an int key) are refused in one line."""
    seen: dict[str, Setting] = {}
    found = []
    for setting in settings:
        made, experiment = canonical(spec, setting.overrides)
        for key in (made.identity(), experiment):
            if key in seen:
                raise FloodError(
                    f"{what}: {_given(seen[key])} and {_given(setting)} are the same experiment once validated "
                    f"(as {made.label()}); {fix}"
                )
        seen[made.identity()] = seen[experiment] = setting
        found.append((made, experiment))
    return found


def grid_settings(mode: str, axes: dict[str, list[Any]]) -> list[Setting]:
    """The grid's settings, baseline first: every combination of the axes in ``mode``,
    and a baseline for every combination of the axes that a baseline has too."""
    def product(keys: list[str]) -> list[dict[str, Any]]:
        return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]

    shared = [key for key in axes if _mode_key(key) is None]
    settings = [Setting({"train.mode": "baseline", **point}) for point in product(shared)]
    if mode != "baseline":
        settings += [Setting({"train.mode": mode, **point}) for point in product(list(axes))]
    return settings


@dataclass
class SweepSpec:
    """Everything a worker needs, saved in sweep.yaml and in the study's attributes."""

    name: str
    folder: str
    base: dict[str, Any]  # the resolved base config (Config.experiment_dict)
    mode: str
    settings: list[dict[str, Any]]  # Setting.overrides of the grid (a search: its baselines)
    seeds: list[int]
    search: list[dict[str, Any]] = field(default_factory=list)  # Range fields
    trials: int = 0
    prune: bool = False  # a search's median pruner on intermediate validation loss
    storage: str = ""  # a database URL; empty: the journal file in the sweep folder
    study: str = ""

    @property
    def storage_url(self) -> str:
        return self.storage or str(Path(self.folder) / JOURNAL_FILE)

    @property
    def runs_dir(self) -> Path:
        return Path(self.folder) / RUNS_DIR

    @property
    def grid_study(self) -> str:
        """The study of the enqueued runs: the grid, or a search's baselines."""
        return f"{self.study}:baseline" if self.search else self.study

    @property
    def expected_runs(self) -> int:
        return len(self.settings) * len(self.seeds) + self.trials * len(self.seeds)

    def describe(self) -> str:
        labels = "; ".join(Setting(s).label() for s in self.settings)
        what = f"{len(self.settings)} setting(s) ({labels})"
        if self.search:
            ranges = ", ".join(f"{r['key'].split('.')[-1]} in [{r['low']:g}, {r['high']:g}]{' log' if r['log'] else ''}" for r in self.search)
            what += f" + {self.trials} TPE trial(s) over {ranges}"
        return f"{what} × {len(self.seeds)} seed(s) = {self.expected_runs} runs"


def config_for(spec: SweepSpec, overrides: dict[str, Any], seed: int, run_name: str) -> Any:
    """The validated config of one run of the sweep."""
    import copy

    from flood_cli.config.schema import apply_override, validate

    raw = copy.deepcopy(spec.base)
    mode = overrides.get("train.mode", raw["train"].get("mode"))
    own = MODE_KEYS_OF.get(mode, ())
    for key, value in CLEARED.items():  # settings of the base config's mode, not this run's
        if key not in own:
            apply_override(raw, key, value)
    for key, value in {**overrides, "train.seed": seed}.items():
        apply_override(raw, key, value)
    apply_override(raw, "output.dir", str(spec.runs_dir))
    apply_override(raw, "output.name", run_name)
    return validate(raw, f"sweep setting {Setting(overrides).label()}")


# ---------------------------------------------------------------------------
# Storage and studies


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


# ---------------------------------------------------------------------------
# The journal file: a cut last line is set aside, any other damage is said in one line


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


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


@dataclass
class Claimed:
    trial_id: int
    number: int
    attrs: dict[str, Any]
    params: dict[str, Any]
    study: Any = None  # a search trial's study, for its pruner


_held_locks: dict[str, list[int]] = {}  # path -> [fd, depth]: the queue lock is reentrant
_writes = [0, -1]  # queue writes so far, and DIE_AFTER_WRITE (-1: not read yet)


@contextlib.contextmanager
def _locked(path: Path | None) -> Any:
    """Hold the sweep's queue lock (flock; the kernel drops it when a process dies).
    Every change of the queue that takes more than one write happens under it, so no
    other process sees it half done unless its writer died (and then reconcile mends it)."""
    if path is None or not path.parent.is_dir():
        yield
        return
    key = str(path)
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held_locks[key] = [fd, 1]
        try:
            yield
        finally:
            del _held_locks[key]
    finally:
        os.close(fd)


def _wrote() -> None:
    """Count one write of the queue protocol; the test hook FLOOD_SWEEP_DIE_AFTER_WRITE=k
    (read once) kills the process right after the k-th, as a crash there would."""
    if _writes[1] < 0:
        text = os.environ.get(DIE_AFTER_WRITE, "")
        _writes[1] = int(text) if text.isdigit() else 0
    _writes[0] += 1
    if _writes[1] and _writes[0] == _writes[1]:
        os._exit(86)


class Queue:
    """One study's trials as a work queue (grid trials are enqueued WAITING)."""

    def __init__(self, storage: Any, study: Any, lock: Path | None = None):
        self.storage = storage
        self.study = study
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.lock = lock

    def locked(self) -> Any:
        return _locked(self.lock)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def claim(self) -> Claimed | None:
        """Take one WAITING trial: the storage lets only one claimant move it to RUNNING."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.trial_id(trial.number)
            try:
                won = self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
                _wrote()
                if won:
                    return Claimed(trial_id, trial.number, dict(trial.user_attrs), dict(trial.params))
            except UpdateFinishedTrialError:
                continue
        return None

    def reclaim_stale(self, grace: float | None = None) -> list[int]:
        """Fail RUNNING trials whose worker is gone and enqueue them again (same run).
        Two writes, under the queue lock; a crash between them leaves a stopped trial
        that :func:`reconcile` queues again."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        grace = GRACE_S if grace is None else grace
        retried = []
        with self.locked():
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not _is_stale(trial, grace, self.study.study_name):
                    continue
                try:
                    if not self.storage.set_trial_state_values(self.trial_id(trial.number), state=TrialState.FAIL):
                        continue
                except UpdateFinishedTrialError:
                    continue  # another process reclaimed it first
                _wrote()
                if _defined(trial):
                    attrs = {k: v for k, v in trial.user_attrs.items() if k in TRIAL_SPEC_KEYS}
                    self.study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "retry_of": trial.number})
                    _wrote()
                retried.append(trial.number)
        return retried


def _defined(trial: Any) -> bool:
    """Whether a trial says what it runs: a grid run, or a search trial's values (one
    asked by TPE whose worker died before it recorded them does not, and is not retried)."""
    return "run" in trial.user_attrs or "overrides" in trial.user_attrs


TRIAL_SPEC_KEYS = ("run", "setting", "overrides", "seed", "search")


def _pid_namespace() -> int | None:
    """This process's PID namespace (Linux): a pid means the same process only inside one.
    A worker in a container or under `unshare --pid` shares the host's name, not its pids."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


# What this process has seen of other workers' heartbeats: (study, trial) -> (the
# heartbeat's value, this machine's monotonic time when it was first seen so).
_SEEN: dict[tuple[str, int], tuple[Any, float]] = {}


def _is_stale(trial: Any, grace: float, study: str = "") -> bool:
    """Whether a RUNNING trial's worker is gone: its process no longer exists (on this
    host, in this PID namespace: at once), or this process has seen its heartbeat
    unchanged for ``grace`` seconds of its own monotonic clock (a worker elsewhere, or a
    frozen one). The heartbeat's value is only compared with itself, never with this
    machine's clock: a worker whose clock runs behind or ahead is judged the same."""
    attrs = trial.user_attrs
    here = _pid_namespace()
    if attrs.get("host") == socket.gethostname() and "pid" in attrs and here is not None and attrs.get("pid_ns") == here:
        if not _alive(int(attrs["pid"]), attrs.get("pid_start")):
            return True
    beat = (attrs.get("heartbeat"), attrs.get("pid"), attrs.get("host"))
    now = time.monotonic()
    key = (study, trial.number)
    seen = _SEEN.get(key)
    if seen is None or seen[0] != beat:
        _SEEN[key] = (beat, now)
        return False
    return now - seen[1] > grace


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


class Heartbeat:
    """A worker's lease on its claimed trial, renewed every HEARTBEAT_S seconds from a
    thread. The lease is lost when another process took the trial as stale (the renewal
    finds it ended) or when it could not be renewed for half the grace period by this
    machine's clock (a storage that does not answer, a process frozen by SIGSTOP): the
    worker then stops at once, without writing another byte (:meth:`fence`), since the
    run may have a new owner. :meth:`check` is called before each training step's
    writes, so a worker thawed after the grace period stops before its next row."""

    def __init__(self, queue: Queue, trial_id: int, every: float | None = None, what: str = ""):
        self.queue, self.trial_id = queue, trial_id
        self.every = HEARTBEAT_S if every is None else every
        self.what = what or f"trial {trial_id}"
        self.renewed = time.monotonic()
        self.marked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flood-sweep-heartbeat", daemon=True)

    def mark(self) -> None:
        """Record who owns the trial (host, pid and its start, PID namespace) and a first beat."""
        storage, pid = self.queue.storage, os.getpid()
        storage.set_trial_user_attr(self.trial_id, "host", socket.gethostname())
        storage.set_trial_user_attr(self.trial_id, "pid", pid)
        storage.set_trial_user_attr(self.trial_id, "pid_start", _process_start(pid))
        storage.set_trial_user_attr(self.trial_id, "pid_ns", _pid_namespace())
        storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        _wrote()
        self.renewed = time.monotonic()
        self.marked = True

    def __enter__(self) -> Heartbeat:
        if not self.marked:
            self.mark()
        self._thread.start()
        return self

    def _renew(self) -> None:
        faults = os.environ.get(FAULTS)
        if faults and (Path(faults) / f"heartbeat-fails-{os.getpid()}").exists():
            raise OSError("heartbeat failure injected by the test hook")
        self.queue.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())

    def _beat(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        failing_since: float | None = None
        while not self._stop.wait(self.every):
            self.check()  # woken after a freeze: the lease may be another's by now
            started = time.monotonic()
            try:
                self._renew()
            except UpdateFinishedTrialError:
                self.fence("another worker took its trial as stale and queued the run again")
            except Exception as exc:  # a storage hiccup: the next beat tries again, and the log says so
                failing_since = failing_since or started
                print(
                    f"heartbeat of trial {self.trial_id} failed ({type(exc).__name__}: {masked(_first_line(exc))}); "
                    f"failing for {time.monotonic() - failing_since:.0f} s (after {GRACE_S / 2:.0f} s this worker stops)",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                if failing_since is not None:
                    print(f"heartbeat of trial {self.trial_id} written again", file=sys.stderr, flush=True)
                failing_since = None
                self.renewed = started

    def check(self) -> None:
        """Stop this worker if its lease may have lapsed (not renewed for GRACE_S / 2)."""
        silent = time.monotonic() - self.renewed
        if silent > GRACE_S / 2 and not self._stop.is_set():
            self.fence(f"its lease was not renewed for {silent:.0f} s, half the {GRACE_S:.0f} s after which another worker may take the run")

    def fence(self, why: str) -> None:
        """Lost the lease: exit now (as a kill would; the run folder stays consistent),
        so that nothing more is written by a process that may no longer own the run."""
        print(f"worker {os.getpid()} lost {self.what}: {why}; it stops without writing more (the run continues from its last checkpoint)", file=sys.stderr, flush=True)
        os._exit(WORKER_FENCED)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class _LeaseReporter:
    """Checks the worker's lease before each step's writes (rows, checkpoints), and
    notes each row in the test hook's writer log."""

    def __init__(self, inner: Any, lease: Heartbeat | None, run: str):
        self.inner, self.lease, self.run = inner, lease, run
        self.live_loss_every = inner.live_loss_every
        self.log = os.environ.get(WRITER_LOG)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def before_write(self) -> None:
        if self.lease is not None:
            self.lease.check()
        self.inner.before_write()

    def evaluation(self, row: dict[str, Any]) -> None:
        if self.log:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {self.run} {int(row['step'])}\n".encode())
            finally:
                os.close(fd)
        self.inner.evaluation(row)


# ---------------------------------------------------------------------------
# Creating, resuming, joining


def create_sweep(
    config_path: Path,
    mode: str | None,
    axes: dict[str, list[Any]],
    seeds: list[int],
    search: list[Range],
    trials: int,
    out: Path,
    name: str | None,
    storage_url: str | None,
    study_name: str | None,
    prune: bool = False,
    listed: list[dict[str, Any]] | None = None,
) -> SweepSpec:
    """Validate every run's config, claim the sweep folder, create the study and
    enqueue the grid. Nothing is created when a setting is invalid.

    ``listed`` settings (from --settings FILE) are taken as they are, each with its own
    mode (a study of several methods), next to a baseline."""
    from datetime import datetime

    from flood_cli.config.schema import NAME_CHARACTERS, NAME_MAX, is_plain_name, load_config
    from flood_cli.core.errors import shown_repr
    from flood_cli.runs.folder import check_writable

    if name is not None and not is_plain_name(name):
        raise FloodError(
            f"--name {shown_repr(name)} is not a plain folder name; use 1 to {NAME_MAX} {NAME_CHARACTERS} (not . or ..)"
        )
    if trials < 0:
        raise FloodError(f"--trials {trials}: give the number of settings TPE may try (1 or more)")
    refuse_own_keys(axes, "--set")
    refuse_own_keys([r.key for r in search], "--search")
    for overrides in listed or []:
        refuse_own_keys(overrides, "--settings")
    base = load_config(config_path)
    if listed is not None:
        # One-valued --set flags are fixed for every setting (a model path, say); more
        # values would make it a grid, which the file lists itself.
        if search or any(len(values) > 1 for values in axes.values()):
            raise FloodError("--settings lists the settings itself; drop --search and --set with several values")
        if axes:
            from flood_cli.config.schema import apply_override, validate

            raw = base.experiment_dict()
            for key, values in axes.items():
                apply_override(raw, key, values[0])
            base = validate(raw, f"config error in {config_path} with --set")
        axes = {}
        mode = mode or "study"
    searched = {r.key for r in search}
    if mode is None:  # as `flood train --b X` switches to flooding, so do flood levels here
        owners = [owner for owner in map(_mode_key, (*axes, *searched)) if owner is not None]
        if owners and not all(owner in MODE_KEYS_OF.get(base.train.mode, ()) for owner in owners):
            mode = _mode_of(owners[0])
        else:
            mode = base.train.mode
    for key in (*axes, *searched):
        if listed is None and _mode_key(key) is not None and _mode_key(key) not in MODE_KEYS_OF.get(mode, ()):
            raise FloodError(f"{key} does not apply to mode {mode}; drop it, or pass --mode {_mode_of(key)}")
    if search and not trials:
        raise FloodError("--search needs --trials N, the number of settings TPE may try")
    if trials and not search:
        raise FloodError("--trials applies to --search; for a grid give the values (--b 0,0.1) instead")
    if prune and not search:
        raise FloodError("--prune applies to --search (a grid runs every setting to the end)")
    if not axes and not search and listed is None:
        raise FloodError(
            "nothing to sweep; give values (--b 0,0.05,0.1, --ascent-lr, --lr, --set key=v1,v2), --search or --settings FILE"
        )
    if mode == "flooding" and "train.b" not in axes and base.train.b is None and not any(r.key == "train.b" for r in search):
        raise FloodError("mode flooding needs flood levels: --b 0,0.05,0.1 or --search b=0:0.6")
    if listed is not None:
        grid_size = len(listed) + 1
    else:  # as grid_settings makes them, counted before a grid of them is built
        shared = math.prod(len(values) for key, values in axes.items() if _mode_key(key) is None)
        own = math.prod(len(values) for values in axes.values()) if axes else int(not search)
        grid_size = shared + (own if mode != "baseline" else 0)
    if (grid_size + trials) * len(seeds) > MAX_RUNS:
        raise FloodError(
            f"this sweep would make {(grid_size + trials) * len(seeds)} runs ({grid_size + trials} setting(s) or trial(s) × "
            f"{len(seeds)} seed(s)), more than {MAX_RUNS}; give fewer values, settings, trials or seeds, or split it into several sweeps"
        )
    if listed is not None:
        settings = [Setting(overrides) for overrides in listed]
    else:
        settings = grid_settings(mode, axes) if axes else [Setting({"train.mode": "baseline"})]
        if not axes and mode != "baseline" and not search:
            settings.append(Setting({"train.mode": mode}))
    check_writable(out)
    folder_name = name or f"sweep-{mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    folder = (out / folder_name).resolve()
    spec = SweepSpec(
        name=folder_name,
        folder=str(folder),
        base=base.experiment_dict(),
        mode=mode,
        settings=[s.overrides for s in settings],
        seeds=seeds,
        search=[asdict(r) for r in search],
        trials=trials,
        prune=prune,
        storage=public_url(storage_url) if storage_url else "",  # never its password
        study=study_name or folder_name,
    )
    # Every config must be valid before anything exists; each setting is kept as its
    # validated config holds it, and one experiment is never two settings (nor two runs).
    made = distinct_settings(spec, settings, *(("--settings", "keep one") if listed is not None else ("the grid", "give each value once")))
    if listed is not None:
        # The base config's own baseline, unless a listed setting is that experiment (a
        # baseline of other settings, such as an SGD one beside backstitch, is not).
        baseline, experiment = canonical(spec, {"train.mode": "baseline"})
        if all(other != experiment for _, other in made):
            made.insert(0, (baseline, experiment))
    spec.settings = [setting.overrides for setting, _ in made]
    for setting, _ in made:
        config_for(spec, setting.overrides, seeds[0], setting.run_name(seeds[0]))
    if search:
        probe = {r.key: (int((r.low + r.high) // 2) if r.integer else (r.low + r.high) / 2) for r in search}
        config_for(spec, {"train.mode": mode, **probe}, seeds[0], "probe")
    try:
        folder.mkdir()
    except FileExistsError:
        raise FloodError(f"sweep folder {folder} already exists; pass another --name, or --resume it") from None
    try:
        (folder / RUNS_DIR).mkdir()
        (folder / WORKERS_DIR).mkdir()
        _write_spec(spec)
        _create_studies(spec)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return spec


def _create_studies(spec: SweepSpec) -> None:
    import optuna

    storage = open_storage(spec.storage_url)
    names = [spec.grid_study] + ([spec.study] if spec.search else [])
    for study_name in names:
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
        except optuna.exceptions.DuplicatedStudyError:
            raise FloodError(f"the storage already has a study {study_name!r}; pass another --study") from None
        study.set_user_attr("flood_sweep", asdict(spec))
    grid = optuna.load_study(study_name=spec.grid_study, storage=storage)
    for overrides in spec.settings:
        for seed in spec.seeds:
            _enqueue(grid, Setting(overrides), seed)


def _enqueue(grid: Any, setting: Setting, seed: int) -> None:
    """Queue one run of the grid: a trial with no parameters, the run named in its attrs."""
    grid.enqueue_trial(
        {}, user_attrs={"run": setting.run_name(seed), "setting": setting.label(), "overrides": setting.overrides, "seed": seed}
    )


def _write_spec(spec: SweepSpec) -> None:
    """sweep.yaml, replaced in one rename (a reader never sees half of it), staged in a
    temporary file of its own (two processes writing at once never share one)."""
    from flood_cli.runs.folder import atomic_write_text

    atomic_write_text(Path(spec.folder) / SPEC_FILE, yaml.safe_dump(asdict(spec), sort_keys=False))


def add_settings(spec: SweepSpec, listed: list[dict[str, Any]]) -> list[str]:
    """Settings of ``listed`` that the sweep lacks, added to it: validated, saved in
    sweep.yaml and the study, and queued for every seed of the sweep. Settings it has
    already are left as they are (their runs are never redone), and none is removed.
    A setting is one the sweep has when it is the same experiment once validated,
    whatever its key order or spelling (1e-3 and 0.001). Returns the labels of the
    settings added."""
    if spec.search:
        raise FloodError(f"sweep {spec.name} is a --search; settings can be added to a grid sweep only: start a new sweep")
    for overrides in listed:
        refuse_own_keys(overrides, "--settings")
    if (len(spec.settings) + len(listed)) * len(spec.seeds) > MAX_RUNS:
        raise FloodError(
            f"the sweep would make more than {MAX_RUNS} runs with these settings; split them into a new sweep"
        )
    known = [canonical(spec, overrides) for overrides in spec.settings]
    have = {key for setting, experiment in known for key in (setting.identity(), experiment)}
    wanted = distinct_settings(spec, [Setting(overrides) for overrides in listed], "--settings")
    new = [setting for setting, experiment in wanted if setting.identity() not in have and experiment not in have]
    storage = open_storage(spec.storage_url)
    grid = load_study(storage, spec.grid_study)
    trials = grid.get_trials(deepcopy=False)
    taken = {trial.user_attrs.get("run") for trial in trials}
    for setting in new:  # every config must be valid before anything changes
        config_for(spec, setting.overrides, spec.seeds[0], setting.run_name(spec.seeds[0]))
        clash = next((setting.run_name(seed) for seed in spec.seeds if setting.run_name(seed) in taken), None)
        if clash:
            raise FloodError(f"setting {setting.label()} would name its runs {clash}, as the sweep does already; drop it")
    spec.settings = [*spec.settings, *(setting.overrides for setting in new)]
    if new and (Path(spec.folder) / SPEC_FILE).is_file():
        _write_spec(spec)
    if new:
        grid.set_user_attr("flood_sweep", asdict(spec))
    # Queued by setting and seed, so an addition cut short is completed by running it again.
    queued = {(Setting(trial.user_attrs.get("overrides") or {}).identity(), trial.user_attrs.get("seed")) for trial in trials}
    for setting in map(Setting, spec.settings):
        for seed in spec.seeds:
            if (setting.identity(), seed) not in queued:
                _enqueue(grid, setting, seed)
    return [setting.label() for setting in new]


# What each field of sweep.yaml holds, checked before anything trusts a hand-edited file.
SPEC_TYPES: dict[str, tuple[type, type | None, str]] = {
    "name": (str, None, "a name"),
    "folder": (str, None, "a path"),
    "base": (dict, None, "a mapping (the base config)"),
    "mode": (str, None, "a mode name"),
    "settings": (list, dict, "a list of settings (mappings)"),
    "seeds": (list, int, "a list of whole-number seeds"),
    "search": (list, dict, "a list of search ranges (mappings)"),
    "trials": (int, None, "a whole number"),
    "prune": (bool, None, "true or false"),
    "storage": (str, None, "a database URL or empty"),
    "study": (str, None, "a study name"),
}


def read_spec(folder: Path) -> SweepSpec:
    """sweep.yaml, checked: each field of its type, and equal to what the sweep's study
    recorded when the sweep was made or settings were added (an edited sweep.yaml would
    train and compare new runs under settings the earlier ones did not have)."""
    path = folder / SPEC_FILE
    if not path.is_file():
        _restore_spec(folder)
    not_ours = "it was not written by flood sweep, or was edited: put back what flood sweep wrote"
    from flood_cli.runs.folder import read_run_file

    try:  # a regular file of at most MAX_SPEC_BYTES (a named pipe never blocks a resume)
        data = safe_yaml.load(read_run_file(path, MAX_SPEC_BYTES).decode("utf-8"))
    except (safe_yaml.RefusedYaml, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FloodError(f"{path} cannot be read as a sweep ({_first_line(exc)}); {not_ours}") from None
    if not isinstance(data, dict):
        raise FloodError(f"{path} holds {type(data).__name__}, not a sweep; {not_ours}")
    for key, value in data.items():
        if key not in SPEC_TYPES:
            raise FloodError(f"{path}: unknown field {shown_repr(key)}; {not_ours}")
        kind, item, what = SPEC_TYPES[key]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if not wrong and item is not None:
            wrong = any(not isinstance(x, item) or (item is int and isinstance(x, bool)) for x in value)
        if wrong:
            raise FloodError(f"{path}: {key} is {shown_repr(value)}, not {what}; {not_ours}")
    try:
        spec = SweepSpec(**data)
    except TypeError as exc:
        raise FloodError(f"{path} cannot be read as a sweep ({_first_line(exc)}); {not_ours}") from None
    spec.folder = str(folder.resolve())  # the folder may have moved since it was made
    journal = Path(spec.storage_url)
    if not spec.storage and not journal.is_file():  # (opening it would make an empty one)
        raise FloodError(
            f"the sweep journal {journal} is missing (it records which runs are done); restore it from a backup, or start a new "
            f"sweep (the runs in {spec.runs_dir} stay readable: flood compare {spec.runs_dir})"
        )
    _check_unedited(path, spec)
    return spec


def _restore_spec(folder: Path) -> None:
    """sweep.yaml is missing: written again from the record its study keeps (the same
    values: an edited sweep.yaml is refused against that record), said in one line; or
    one line naming what is missing."""
    path, journal = folder / SPEC_FILE, folder / JOURNAL_FILE
    if not journal.is_file():
        if any((folder / part).exists() for part in (RUNS_DIR, WORKERS_DIR, QUEUE_LOCK)):
            raise FloodError(
                f"{path} and {journal} are both missing, so nothing says what the sweep is or which runs are done; restore them "
                f"from a backup (a sweep on a database: join it with flood sweep --storage URL --study NAME --worker --out {folder})"
            )
        raise FloodError(f"{folder} is not a sweep folder (no {SPEC_FILE}); pass the folder that flood sweep printed")
    record = None
    for study in open_storage(str(journal)).get_all_studies():
        data = study.user_attrs.get("flood_sweep")
        if isinstance(data, dict) and study.study_name == f"{data.get('study')}{':baseline' if data.get('search') else ''}":
            record = data  # the grid study's: --resume --settings updates that one
    if record is None:
        raise FloodError(f"{path} is missing and {journal} holds no record of the sweep to write it from; restore {SPEC_FILE} from a backup")
    try:
        spec = SweepSpec(**{**record, "folder": str(folder.resolve())})
    except TypeError as exc:
        raise FloodError(f"{path} is missing and the record of the sweep in {journal} cannot be read ({_first_line(exc)}); restore {SPEC_FILE} from a backup") from None
    _write_spec(spec)
    print(f"{path} was missing: written again from the sweep's record in {journal}", file=sys.stderr, flush=True)


def _check_unedited(path: Path, spec: SweepSpec) -> None:
    from flood_cli.config.schema import changed_keys, changes_text

    stored = load_study(open_storage(spec.storage_url), spec.grid_study).user_attrs.get("flood_sweep")
    if not isinstance(stored, dict):
        return
    changed = changed_keys(
        {k: v for k, v in stored.items() if k != "folder"}, {k: v for k, v in asdict(spec).items() if k != "folder"}
    )
    if changed:
        raise FloodError(
            f"{path} was edited since the sweep was made: {changes_text(changed, shown_repr, 4)}; its runs were trained with the values its "
            "study holds: put them back to go on, add settings with --resume --settings FILE, or start a new sweep"
        )


def spec_from_study(storage_url: str, study_name: str) -> SweepSpec:
    storage = open_storage(storage_url)
    study = load_study(storage, study_name)
    data = study.user_attrs.get("flood_sweep")
    if not isinstance(data, dict):
        raise FloodError(f"study {study_name!r} was not created by flood sweep; join a study that flood sweep made")
    spec = SweepSpec(**data)
    spec.storage = public_url(storage_url)  # its password stays in this process
    return spec


# ---------------------------------------------------------------------------
# The worker: claim, run, tell


class WorkerInterrupted(Exception):
    """A worker stopped by SIGINT/SIGTERM: its trial is queued again (exit 130)."""


class _StopSignals:
    """A worker's SIGINT/SIGTERM outside the training loop (which takes them itself and
    stops after its step). Inside a trial (a run starting, or between a search's seeds)
    it stops at once: the run continues from its checkpoint. Between trials (claiming,
    recording a result) it is noted, and the worker stops before the next claim, so no
    write to the storage is cut in half. A second signal stops at once anywhere."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.in_trial = False
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        first = self.signal is None
        self.signal = self.signal or signum
        if self.in_trial or not first:
            raise KeyboardInterrupt

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def work(spec: SweepSpec, log: Callable[[str], None] = lambda text: None, verbose: bool = False) -> int:
    """Run trials until none is left; return how many this worker finished. SIGINT or
    SIGTERM stops the run after its current step with a checkpoint, queues its trial
    again and raises WorkerInterrupted."""
    with _StopSignals() as stop:
        return _work(spec, log, verbose, stop)


def _work(spec: SweepSpec, log: Callable[[str], None], verbose: bool, stop: _StopSignals) -> int:
    storage = open_storage(spec.storage_url)
    lock = queue_lock(spec)
    grid = Queue(storage, load_study(storage, spec.grid_study), lock)
    search = Queue(storage, load_study(storage, spec.study, spec.prune), lock) if spec.search else None
    reconcile(spec, storage, log)  # runs a crash left without a claim are queued again
    from flood_cli.core.progress import make_reporter

    reporter_factory = lambda: make_reporter(quiet=not verbose)  # noqa: E731
    done = 0
    while True:
        if stop.signal is not None:
            raise WorkerInterrupted(f"stopped by {signal.Signals(stop.signal).name} between runs; nothing to queue again")
        for queue in filter(None, (grid, search)):
            _retrying(spec, "take over stale trials", queue.reclaim_stale)
        claimed = _retrying(spec, "claim a run", grid.claim)
        queue = grid
        if claimed is None and search is not None:
            claimed, queue = _retrying(spec, "claim a trial", lambda: _ask(search, spec)), search
        if claimed is None:
            if not _retrying(spec, "look for running trials", lambda: _others_running(grid, search)):
                return done
            # Every run left is held by another worker: wait, and take over any whose
            # worker dies or freezes (no run is left to a dead worker until --resume).
            _pause(stop, _poll_s())
            continue
        what = str(claimed.attrs.get("run") or claimed.attrs.get("setting") or f"trial {claimed.number}")
        lease = Heartbeat(queue, claimed.trial_id, what=what)
        _retrying(spec, "record its claim", lease.mark)
        with lease:
            try:
                stop.in_trial = True
                if stop.signal is not None:  # it came while this trial was claimed
                    raise KeyboardInterrupt
                value, attrs = _run_trial(spec, claimed, reporter_factory, log, lease)
            except (_Interrupted, KeyboardInterrupt) as exc:
                # Stopped by a signal (after a checkpoint, or at once): the same run, queued again.
                stop.in_trial = False
                _requeue(queue, claimed)
                what = claimed.attrs.get("run") or claimed.attrs.get("setting") or f"trial {claimed.number}"
                why = str(exc) if isinstance(exc, _Interrupted) else "stopped at once (it continues from its last checkpoint)"
                raise WorkerInterrupted(f"{what}: {why}; queued again for --resume") from None
            except RunPruned:
                stop.in_trial = False
                _tell(queue, claimed, state=_state("PRUNED"))
                log(f"pruned {claimed.attrs.get('setting', claimed.number)}")
                done += 1
                continue
            except Exception as exc:
                stop.in_trial = False
                _tell(queue, claimed, state=_state("FAIL"), attrs={"error": masked(f"{type(exc).__name__}: {exc}")[:500]})
                log(f"failed {claimed.attrs.get('run', claimed.number)}: {exc}")
                done += 1
                continue
            finally:
                stop.in_trial = False
        if not _retrying(spec, "record a result", lambda: _tell(queue, claimed, value, attrs=attrs)):
            log(f"trial {claimed.number} was taken as stale and queued again meanwhile; its retry reports its run(s)")
        done += 1


def _poll_s() -> float:
    """How often a worker with nothing to claim looks at the trials others hold."""
    return max(0.2, min(LOCK_POLL_S, HEARTBEAT_S))


def _pause(stop: _StopSignals, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while stop.signal is None and time.monotonic() < deadline:
        time.sleep(min(0.2, seconds))


def _others_running(grid: Queue, search: Queue | None) -> bool:
    from optuna.trial import TrialState

    return any(queue.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) for queue in filter(None, (grid, search)))


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


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


class _Interrupted(Exception):
    pass


def _requeue(queue: Queue, claimed: Claimed) -> None:
    """The claimed trial stopped (a signal): failed, and its run queued again. Two writes,
    under the queue lock; a crash between them leaves a stopped trial that
    :func:`reconcile` queues again."""
    from optuna.trial import TrialState

    with queue.locked():
        if not _tell(queue, claimed, state=TrialState.FAIL):
            return  # reclaimed meanwhile: its retry is queued already
        attrs = {k: v for k, v in claimed.attrs.items() if k in TRIAL_SPEC_KEYS}
        queue.study.enqueue_trial(claimed.params, user_attrs={**attrs, "retry_of": claimed.number})
        _wrote()


def _tell(queue: Queue, claimed: Claimed, value: float | None = None, state: Any = None, attrs: dict | None = None) -> bool:
    """Record the claimed trial's end (attributes first, then its state); False when it
    ended already: another worker took it as stale and queued its run again, and that
    retry reports the run (reading it back when it is complete)."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        if queue.storage.get_trial(claimed.trial_id).state.is_finished():
            return False
        for key, item in (attrs or {}).items():
            queue.storage.set_trial_user_attr(claimed.trial_id, key, item)
            _wrote()
        if state is None:
            queue.study.tell(claimed.number, value)
        else:
            queue.study.tell(claimed.number, state=state)
    except (UpdateFinishedTrialError, ValueError):
        if not queue.storage.get_trial(claimed.trial_id).state.is_finished():
            raise
        return False
    _wrote()
    return True


def _ask(queue: Queue, spec: SweepSpec) -> Claimed | None:
    """A TPE trial, while the budget lasts (retries of interrupted ones first)."""
    waiting = queue.claim()
    if waiting is not None:
        waiting.study = queue.study
        return waiting
    if _trials_used(queue.study) >= spec.trials:
        return None
    trial = queue.study.ask()
    params = {}
    for entry in spec.search:
        if entry.get("integer"):
            params[entry["key"]] = trial.suggest_int(entry["key"], int(entry["low"]), int(entry["high"]), log=entry["log"])
        else:
            params[entry["key"]] = trial.suggest_float(entry["key"], entry["low"], entry["high"], log=entry["log"])
    overrides = {"train.mode": spec.mode, **params}
    setting = Setting(overrides)
    attrs = {"setting": setting.label(), "overrides": overrides, "search": True}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return Claimed(queue.trial_id(trial.number), trial.number, attrs, params, queue.study)


def _trials_used(study: Any) -> int:
    """The trials of a search's budget: every trial, failed ones included (a setting
    that fails must not let TPE propose others without end), except one queued again
    (interrupted, or its worker died), whose retry counts instead."""
    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs.get("retry_of") for trial in trials}
    return sum(1 for trial in trials if trial.number not in retried and (_defined(trial) or not trial.state.is_finished()))


def _run_trial(
    spec: SweepSpec, claimed: Claimed, reporter_factory: Callable[[], Any], log: Callable[[str], None], lease: Heartbeat | None = None
) -> tuple[float, dict[str, Any]]:
    """Run the trial's run(s): one for a grid trial, every seed for a search trial."""
    # A search trial's values as asked (kept in its attributes: the retry of an
    # interrupted one is a queued trial, whose params Optuna shows only once suggested).
    overrides = claimed.attrs["overrides"]
    if claimed.attrs.get("search"):
        seeds = spec.seeds
    else:
        seeds = [claimed.attrs["seed"]]
    setting = Setting(overrides)
    losses, accuracies, names = [], [], []
    for index, seed in enumerate(seeds):
        name = claimed.attrs.get("run") if not claimed.attrs.get("search") else setting.run_name(seed)
        with reporter_factory() as shown:
            reporter = _LeaseReporter(shown, lease, name)
            if spec.prune and claimed.study is not None and index == 0:
                reporter = _PruningReporter(reporter, claimed)  # judged on its first seed's curve
            summary = _run_one(spec, overrides, seed, name, reporter)
        losses.append(float(summary["best_val_loss"]))
        accuracies.append(float(summary.get("best_val_accuracy") or math.nan))
        names.append(name)
        log(f"finished {name}: best val_loss {summary['best_val_loss']:.4f}")
    attrs = {"runs": names, "best_val_accuracy": sum(accuracies) / len(accuracies)}
    return sum(losses) / len(losses), attrs


class _PruningReporter:
    """Passes evaluations to the trial's pruner; stops the run when it says so."""

    def __init__(self, inner: Any, claimed: Claimed):
        import optuna

        self.inner = inner
        self.trial = optuna.trial.Trial(claimed.study, claimed.trial_id)
        self.live_loss_every = inner.live_loss_every

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def evaluation(self, row: dict[str, Any]) -> None:
        self.inner.evaluation(row)
        self.trial.report(float(row["val_loss"]), int(row["step"]))
        if self.trial.should_prune():
            raise RunPruned(f"pruned at step {row['step']}: val_loss {row['val_loss']:.4f} is worse than the median of earlier trials there")


def _run_one(spec: SweepSpec, overrides: dict[str, Any], seed: int, name: str, reporter: Any) -> dict[str, Any]:
    """Train one run of the sweep, or continue it, or read it when it is complete."""
    from flood_cli.core.errors import RunInterrupted, UnresumableRun
    from flood_cli.runs.folder import RunDir, read_metrics
    from flood_cli.train.checkpoint import last_checkpoint
    from flood_cli.train.entry import resume_training, run_training

    run_dir = spec.runs_dir / name
    try:
        held = _hold_folder(run_dir)  # waits while another process trains it
        if held is not None:
            try:
                summary = RunDir(run_dir).load_summary()
                if summary.get("status") == "completed":
                    return summary  # never run again
                resume = last_checkpoint(run_dir).exists()
                if not resume:
                    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
                    if rows:
                        raise FloodError(
                            f"run {run_dir} has rows but no checkpoint (nor a completed summary); it cannot be "
                            f"continued: move the folder aside and resume the sweep to train it again"
                        )
                    shutil.rmtree(run_dir)  # it stopped before its first evaluation: nothing is lost
            finally:
                os.close(held)
            if resume:
                try:
                    resume_training(run_dir, reporter)
                except UnresumableRun as exc:  # flood train's advice (a new --name) cannot help a sweep
                    raise FloodError(
                        f"{exc.problem}; the sweep cannot continue this run: move {run_dir} aside (or delete it) and "
                        f"run flood sweep --resume {spec.folder} again, which trains it anew"
                    ) from None
            else:
                run_training(config_for(spec, overrides, seed, name), reporter)
        else:
            run_training(config_for(spec, overrides, seed, name), reporter)
    except RunInterrupted as exc:
        raise _Interrupted(f"{exc}; checkpoint written") from None  # stopped after a step, as asked
    except KeyboardInterrupt:
        raise _Interrupted("stopped at once (it continues from its last checkpoint)") from None
    return RunDir(run_dir).load_summary()


def _hold_folder(run_dir: Path) -> int | None:
    """The run folder's lock (RunDir.lock's flock), taken without blocking; None when
    there is no folder. While another process holds it (a live worker whose trial was
    taken as stale, or a `flood train --resume` by hand), the folder is that process's:
    it is neither deleted nor resumed, and this worker waits, saying so once, until it
    is let go (the run then reads back complete, or is continued from its checkpoint)."""
    said = False
    while True:
        try:
            fd = os.open(run_dir, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
        if not said:
            print(f"run {run_dir.name} is being trained by another process (its folder is locked); waiting for it", flush=True)
            said = True
        time.sleep(LOCK_POLL_S)


# ---------------------------------------------------------------------------
# Reconcile: the runs of sweep.yaml are the truth, trials are claims on them


def queue_lock(spec: SweepSpec) -> Path | None:
    """The queue lock of the sweep folder (None for a worker that has no sweep folder
    here: one joined over a database from another machine)."""
    folder = Path(spec.folder)
    return folder / QUEUE_LOCK if (folder / SPEC_FILE).is_file() else None


def _run_key(trial: Any, numbered: dict[int, Any]) -> tuple:
    """What a trial is a claim on: a grid trial its run, a search trial the first trial
    of its chain of retries."""
    if "run" in trial.user_attrs:
        return ("run", trial.user_attrs["run"])
    seen = {trial.number}
    while trial.user_attrs.get("retry_of") in numbered and trial.user_attrs["retry_of"] not in seen:
        trial = numbered[trial.user_attrs["retry_of"]]
        seen.add(trial.number)
    return ("trial", trial.number)


def _claims(study: Any) -> dict[tuple, list[Any]]:
    """Each run's trials (a search trial's chain), oldest first."""
    trials = study.get_trials(deepcopy=False)
    numbered = {trial.number: trial for trial in trials}
    grouped: dict[tuple, list[Any]] = {}
    for trial in trials:
        grouped.setdefault(_run_key(trial, numbered), []).append(trial)
    return grouped


def _summary_completed(path: Path) -> bool:
    try:
        from flood_cli.runs.folder import read_run_file

        return json.loads(read_run_file(path / "summary.json")).get("status") == "completed"
    except (OSError, ValueError, AttributeError, FloodError):  # not a summary flood can read: not completed
        return False


def _lost(trials: list[Any], runs_dir: Path | None) -> str | None:
    """Why a run has neither a result nor a live owner (None when it has one of them):
    its latest trial decides its outcome; a WAITING or RUNNING one owns it (a stale
    RUNNING one was reclaimed before this is asked)."""
    from optuna.trial import TrialState

    if not trials:
        return "it has no trial"
    if any(trial.state in (TrialState.WAITING, TrialState.RUNNING) for trial in trials):
        return None
    latest = trials[-1]
    if latest.state == TrialState.COMPLETE:
        if runs_dir is None:
            return None
        names = latest.user_attrs.get("runs") or [latest.user_attrs.get("run")]
        gone = [name for name in names if name and not _summary_completed(runs_dir / name)]
        return f"it completed, but {', '.join(f'runs/{name}' for name in gone)} (or its summary.json) is gone" if gone else None
    if latest.state == TrialState.PRUNED or "error" in latest.user_attrs:
        return None  # an outcome (a failure is tried again by --resume)
    return f"its trial #{latest.number} stopped (interrupted, or its worker died) and was not queued again"


def reconcile(spec: SweepSpec, storage: Any = None, log: Callable[[str], None] = lambda text: None) -> list[str]:
    """Queue again every run of sweep.yaml that has no completed result and no live
    owner. Run by --resume and by every worker when it starts, under the queue lock, so
    no crash between two writes of the queue can lose a run. Run folders are looked at
    only where the sweep folder is here (a completed run whose folder or summary is gone
    is queued again). Returns the runs queued again."""
    storage = storage or open_storage(spec.storage_url)
    lock = queue_lock(spec)
    runs_dir = spec.runs_dir if lock is not None else None
    queued = []
    with _locked(lock):
        for study_name, _ in _studies(spec):
            queue = Queue(storage, load_study(storage, study_name), lock)
            queue.reclaim_stale()
            claims = _claims(queue.study)
            if study_name == spec.grid_study:
                wanted = {}
                for overrides in spec.settings:
                    setting = Setting(overrides)
                    for seed in spec.seeds:
                        wanted[("run", setting.run_name(seed))] = {
                            "run": setting.run_name(seed), "setting": setting.label(), "overrides": setting.overrides, "seed": seed,
                        }
            else:
                wanted = {key: None for key, trials in claims.items() if _defined(trials[0])}
            for key, attrs in wanted.items():
                trials = claims.get(key, [])
                why = _lost(trials, runs_dir)
                if why is None:
                    continue
                if trials:
                    latest = trials[-1]
                    attrs = {**{k: v for k, v in latest.user_attrs.items() if k in TRIAL_SPEC_KEYS}, "retry_of": latest.number}
                    params = dict(latest.params)
                else:
                    params = {}
                queue.study.enqueue_trial(params, user_attrs=attrs)
                _wrote()
                name = attrs.get("run") or attrs.get("setting") or f"trial {key[1]}"
                log(f"{name}: {why}; queued again")
                queued.append(name)
    return queued


# ---------------------------------------------------------------------------
# The sweep's own process: start workers, follow the study, write the results


@dataclass
class Finished:
    """A trial that ended, as the sweep reports it."""

    key: str  # study and trial number
    label: str
    runs: int
    value: float | None
    accuracy: float | None
    error: str | None
    seconds: float


def _studies(spec: SweepSpec) -> list[tuple[str, int]]:
    """The sweep's studies, each with the number of runs one of its trials makes."""
    if spec.search:
        return [(spec.grid_study, 1), (spec.study, len(spec.seeds))]
    return [(spec.study, 1)]


def finished_trials(spec: SweepSpec, storage: Any) -> list[Finished]:
    """The runs (a search: trials) that ended, each as its latest trial ended: completed,
    pruned, or failed with an error. A run queued again (interrupted, its worker died, or
    a failure retried by --resume) is not one until its retry ends."""
    from optuna.trial import TrialState

    found = []
    for study_name, runs_each in _studies(spec):
        for trials in _claims(load_study(storage, study_name)).values():
            trial = trials[-1]
            attrs = trial.user_attrs
            if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                continue  # queued or running
            if trial.state == TrialState.FAIL and "error" not in attrs:
                continue  # interrupted, or its worker died: queued again
            start, end = trial.datetime_start, trial.datetime_complete
            seconds = (end - start).total_seconds() if start and end else 0.0
            label = str(attrs.get("run") or attrs.get("setting") or f"trial {trial.number}")
            found.append(Finished(f"{study_name}#{trial.number}", label, runs_each, trial.value, attrs.get("best_val_accuracy"), attrs.get("error"), seconds))
    return found


def _pdeathsig(parent: int) -> None:
    """A worker gets SIGTERM when the sweep process dies (Linux): it then stops its run
    after a checkpoint and queues it again, instead of training unwatched. (Run in the
    child before it starts; a sweep that died before this gets SIGTERM at once.)"""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def start_workers(spec: SweepSpec, count: int, verbose: bool) -> list[subprocess.Popen]:
    """``count`` worker processes on this machine: one GPU each where there are GPUs,
    else an equal share of the CPU cores each. Each runs in a session of its own, so a
    terminal's Ctrl-C reaches the sweep only, which stops each worker with one SIGTERM."""
    gpus = _visible_gpus()
    threads = max(1, (os.cpu_count() or 1) // count)
    (Path(spec.folder) / WORKERS_DIR).mkdir(exist_ok=True)  # deleted by hand: it holds only logs
    workers = []
    for index in range(count):
        env = {**os.environ, **worker_env(spec.storage)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        else:  # torch takes its thread count from here
            env.setdefault("OMP_NUM_THREADS", str(threads))
        log = open(Path(spec.folder) / WORKERS_DIR / f"worker-{index + 1}.log", "a", encoding="utf-8")
        command = [sys.executable, "-m", "flood_cli", "sweep", "--worker", "--resume", spec.folder]
        if verbose:
            command.append("--verbose")
        workers.append(
            subprocess.Popen(
                command,
                env=env,
                stdout=None if verbose else log,
                stderr=None if verbose else subprocess.STDOUT,
                start_new_session=True,  # not the terminal's process group: no Ctrl-C of its own
                preexec_fn=functools.partial(_pdeathsig, os.getpid()),
            )
        )
        log.close()
    return workers


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item for item in listed.split(",") if item.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def follow(
    spec: SweepSpec,
    workers: list[subprocess.Popen],
    echo: Callable[[str], None],
    progress: Any,
    poll_s: float = 1.0,
) -> list[Finished]:
    """Report each trial as it ends, until every worker has stopped."""
    storage = open_storage(spec.storage_url)
    before = finished_trials(spec, storage)  # ended before this start (a resumed sweep)
    seen = {item.key for item in before}
    done = sum(item.runs for item in before)
    started, finished_here = time.time(), 0
    total = spec.expected_runs
    progress.start(total, done)
    failing = False
    while True:
        alive = any(worker.poll() is None for worker in workers)
        try:
            ended = finished_trials(spec, storage)
        except Exception as exc:
            if not _storage_error(exc) or not alive:
                raise
            if not failing:  # the workers wait it out (and stop themselves if it lasts)
                echo(f"the storage does not answer ({type(exc).__name__}: {masked(_first_line(exc))}); waiting")
            failing = True
            time.sleep(poll_s)
            continue
        if failing:
            echo("the storage answers again")
            failing = False
        for item in ended:
            if item.key in seen:
                continue
            seen.add(item.key)
            finished_here += item.runs
            done += item.runs
            echo(_line(item, done, total))
            progress.update(done, _eta(started, finished_here, total - done))
        if not alive:
            return ended
        time.sleep(poll_s)


def _line(item: Finished, done: int, total: int) -> str:
    where = f"[{done}/{total}]"
    if item.error:
        return f"{where} {item.label}: failed ({item.error})"
    accuracy = f", best val_accuracy {item.accuracy:.4f}" if item.accuracy is not None and not math.isnan(item.accuracy) else ""
    return f"{where} {item.label}: best val_loss {item.value:.4f}{accuracy} ({item.seconds:.0f} s)"


def _eta(started: float, finished_here: int, remaining: int) -> float | None:
    """Seconds left, from the pace of the runs finished since this start."""
    if remaining <= 0:
        return 0.0
    if finished_here == 0:
        return None
    return (time.time() - started) / finished_here * remaining


def stop_workers(workers: list[subprocess.Popen], timeout: float = 600) -> bool:
    """Ask every worker, with one SIGTERM, to stop after its current step (checkpoint,
    its trial queued again). A KeyboardInterrupt while they do (a second Ctrl-C), or
    ``timeout`` seconds, kills them at once: their trials, still marked running by
    processes that are gone, are queued again by --resume, and each run continues from
    its last checkpoint. Returns whether any worker was killed."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    try:
        for worker in workers:
            worker.wait(timeout=max(1.0, deadline - time.time()))
        return False
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            for worker in workers:
                worker.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return True


def disk_use(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def write_results(spec: SweepSpec) -> list[Path]:
    """The grouped table (results.md) and a curve per swept flood level or ascent rate."""
    from flood_cli.compare.command import build_report, compare_command
    from flood_cli.compare.plots import plot_sweep_curve

    folder = Path(spec.folder)
    runs = spec.runs_dir
    written = []
    if not runs.is_dir() or not any(runs.iterdir()):  # (deleted by hand: --resume makes it again)
        return written
    output = compare_command([runs], markdown=True)
    (folder / RESULTS_FILE).write_text(f"# Sweep {spec.name}\n\n{spec.describe()}\n\n{output.text}\n", encoding="utf-8")
    written.append(folder / RESULTS_FILE)
    report = build_report([runs])
    swept = {key for overrides in spec.settings for key in overrides} | {r["key"] for r in spec.search}
    for key in CURVE_KEYS:
        if key in swept:
            path = folder / f"{key.split('.')[-1]}-curve.png"
            if plot_sweep_curve(report, key, path) is not None:
                written.append(path)
    return written


def requeue_failed(spec: SweepSpec, log: Callable[[str], None] | None = None) -> int:
    """On --resume: :func:`reconcile` (runs left without a result or a live owner are
    queued again, each said in one line), then the runs whose latest trial failed with
    an error are tried again (same run folder: continued from its checkpoint where it
    has one). Completed runs never run again. Returns how many failed runs are retried."""
    from optuna.trial import TrialState

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    storage = open_storage(spec.storage_url)
    lock = queue_lock(spec)
    count = 0
    with _locked(lock):
        if lock is not None:  # deleted by hand: reconcile queues again each run it held, in one line each
            spec.runs_dir.mkdir(exist_ok=True)
        reconcile(spec, storage, log)
        for study_name, _ in _studies(spec):
            queue = Queue(storage, load_study(storage, study_name), lock)
            for trials in _claims(queue.study).values():
                trial = trials[-1]
                if trial.state == TrialState.FAIL and "error" in trial.user_attrs and _defined(trial):
                    attrs = {k: v for k, v in trial.user_attrs.items() if k in TRIAL_SPEC_KEYS}
                    queue.study.enqueue_trial(dict(trial.params), user_attrs={**attrs, "retry_of": trial.number})
                    _wrote()
                    count += 1
    return count


@dataclass
class SweepOutcome:
    spec: SweepSpec
    finished: list[Finished]
    results: list[Path]
    disk_bytes: int
    interrupted: bool = False
    killed: bool = False  # a second Ctrl-C stopped the workers at once
    worker_errors: list[str] = field(default_factory=list)  # workers that ended with an error

    @property
    def failed(self) -> list[Finished]:
        return [item for item in self.finished if item.error]


def run_sweep(spec: SweepSpec, workers: int, verbose: bool, echo: Callable[[str], None], progress: Any) -> SweepOutcome:
    """Start the workers, report trials as they end, write the results. Ctrl-C or
    SIGTERM stop every worker after its current step (each run keeps a checkpoint and
    is queued again for --resume); a second one stops them at once."""
    trackers = list((spec.base.get("output") or {}).get("report_to") or [])
    if trackers:  # one line now, rather than every run of the sweep failing on it
        from flood_cli.runs.tracking import check_trackers

        spec.runs_dir.mkdir(parents=True, exist_ok=True)
        check_trackers(trackers, spec.runs_dir)
    processes = start_workers(spec, workers, verbose)
    interrupted = killed = False
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, interrupt)
    try:
        try:
            with progress:
                finished = follow(spec, processes, echo, progress)
        except KeyboardInterrupt:
            interrupted = True
            print("stopping the workers after their current step (Ctrl-C again stops them at once)", file=sys.stderr, flush=True)
            killed = stop_workers(processes)
            finished = finished_trials(spec, open_storage(spec.storage_url))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    worker_errors = []
    left = spec.expected_runs - sum(item.runs for item in finished)
    for index, process in enumerate(processes, start=1):
        code = process.returncode
        if code == WORKER_INTERRUPTED or (code is not None and code < 0) or code == WORKER_FENCED:
            # Stopped from outside, or it lost its lease: its run was queued again, and
            # another worker may have finished it; the sweep is interrupted if runs are left.
            interrupted = interrupted or left > 0
        elif code:
            worker_errors.append(f"worker {index} ended with exit code {code} (see {Path(spec.folder) / WORKERS_DIR / f'worker-{index}.log'})")
    try:
        results = write_results(spec)
    except FloodError:
        results = []  # no run has an evaluation yet (stopped early): nothing to compare
    return SweepOutcome(spec, finished, results, disk_use(Path(spec.folder)), interrupted, killed, worker_errors)


WORKER_INTERRUPTED = 130  # a worker's exit code when a signal stopped it (as flood train's)
WORKER_FENCED = 75  # a worker's exit code when it lost its lease (EX_TEMPFAIL): its run goes on elsewhere or on --resume
