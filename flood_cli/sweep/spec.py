"""What a sweep is: its folder's layout, the swept keys and values (--b, --set, --seeds,
--search, --settings), a setting and its run names, the sweep.yaml record (SweepSpec)
and each run's config."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from flood_cli.config.load import apply_override, validate
from flood_cli.config.schema import NAME_MAX, SEED_MAX, Config
from flood_cli.core import safe_yaml
from flood_cli.core.errors import FloodError
from flood_cli.core.modes import MODE_KEYS_OF, MODES
from flood_cli.runs.folder import atomic_write_text

SPEC_FILE = "sweep.yaml"
JOURNAL_FILE = "study.journal"
RUNS_DIR = "runs"
WORKERS_DIR = "workers"
RESULTS_FILE = "results.md"
QUEUE_LOCK = ".queue.lock"  # in the sweep folder: one process at a time changes the queue

# The keys a flag sweeps, and how a run name shows them.
FLAG_KEYS = {"b": "train.b", "lr": "train.lr", "ascent_lr": "train.ascent_lr"}
SHORT_NAMES = {"train.b": "b", "train.lr": "lr", "train.ascent_lr": "alr", "train.mode": ""}

# Keys that only make sense in one mode (MODE_KEYS_OF, from the registry): a baseline setting drops them.
MODE_KEYS = tuple(dict.fromkeys(key for keys in MODE_KEYS_OF.values() for key in keys))

# What a run of one mode must not carry from a base config of another (reset to defaults).
CLEARED = dict.fromkeys(key for mode in MODES for key in mode.own_keys if key not in mode.options)
CURVE_KEYS = tuple(dict.fromkeys(mode.curve_key for mode in MODES if mode.curve_key is not None))

# Bounds on what one sweep enqueues (each run is one Optuna trial, a few ms to enqueue).
MAX_SEEDS = 1000
MAX_SETTINGS = 1000
MAX_SETTINGS_BYTES = 512_000
MAX_RUNS = 5000
MAX_SPEC_BYTES = 4 * 2**20  # sweep.yaml: its settings (at most MAX_SETTINGS_BYTES) and the base config


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
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(axes[k] for k in keys))]

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
    # --b auto: {multipliers}; once the baseline is done also train_loss, seeds and levels
    b_auto: dict[str, Any] = field(default_factory=dict)

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
    def levels_pending(self) -> bool:
        """An --b auto sweep whose flood levels are not placed yet (sweep.auto_b)."""
        return bool(self.b_auto) and "levels" not in self.b_auto

    @property
    def expected_runs(self) -> int:
        pending = len(self.b_auto["multipliers"]) if self.levels_pending else 0
        return (len(self.settings) + pending) * len(self.seeds) + self.trials * len(self.seeds)

    def describe(self) -> str:
        labels = "; ".join(Setting(s).label() for s in self.settings)
        what = f"{len(self.settings)} setting(s) ({labels})"
        if self.search:
            ranges = ", ".join(f"{r['key'].split('.')[-1]} in [{r['low']:g}, {r['high']:g}]{' log' if r['log'] else ''}" for r in self.search)
            what += f" + {self.trials} TPE trial(s) over {ranges}"
        if self.b_auto:  # --b auto: how its flood levels are (or will be) placed
            multipliers = ", ".join(f"{value:g}" for value in self.b_auto["multipliers"])
            if self.levels_pending:
                what += (
                    f" + {self.mode} at {multipliers} x the baseline's train loss at its best evaluation "
                    f"({len(self.b_auto['multipliers'])} setting(s), placed once the baseline is done)"
                )
            else:
                what += f" (flood levels {multipliers} x the baseline's train loss {self.b_auto['train_loss']:.4g})"
        return f"{what} × {len(self.seeds)} seed(s) = {self.expected_runs} runs"


def config_for(spec: SweepSpec, overrides: dict[str, Any], seed: int, run_name: str) -> Any:
    """The validated config of one run of the sweep."""
    import copy

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


# Text that the sweep's messages share


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _write_spec(spec: SweepSpec) -> None:
    """sweep.yaml, replaced in one rename (a reader never sees half of it), staged in a
    temporary file of its own (two processes writing at once never share one)."""

    atomic_write_text(Path(spec.folder) / SPEC_FILE, yaml.safe_dump(asdict(spec), sort_keys=False))


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
