"""`flood compare`: read run folders and put them side by side, honestly.

The pipeline is discover -> load -> group -> statistics -> render:

* discover: run folders, parent folders that hold runs, shell or quoted globs;
* load: config.yaml, metrics.csv, summary.json, tolerating runs still in progress,
  truncated or corrupt files and missing summaries (each costs one warning line);
* group: runs that differ only by seed form a seed group; each group is compared
  with a baseline group of the same model and data, with a 95% interval of the
  difference of mean best validation loss (Welch's t) so that seed noise is visible;
* render: aligned text for the terminal, Markdown, CSV and JSON; plots live in
  flood_cli.plots and matplotlib is imported only when a plot is asked for.

Only the standard library and PyYAML are imported here, never torch, numpy or
pandas: a thousand run folders must compare in about a second.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml

from flood_cli.errors import FloodError
from flood_cli.runs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

RUN_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)
# The metrics.csv columns compare reads; a row with garbage in one of them is dropped.
METRICS_USED = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_loss_top10_share")
CI_LEVEL = 0.95
JSON_VERSION = 1

# Keys of the train section that do not change what is learned: runs that differ only
# in these are repeats of one experiment (a seed group).
NOT_EXPERIMENT_KEYS = ("seed", "eval_batch_size")
# The hyperparameters every group label shows; other keys appear only when they vary.
LABEL_KEYS = ("train.mode", "train.b", "train.lr", "train.ascent_lr")
# A "running" run whose summary has not changed for this long may have been killed.
STALE_AFTER_S = 3600.0
X_AXES = ("epoch", "step")

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster


# ---------------------------------------------------------------------------
# Result types


@dataclass
class CompareOutput:
    """What the CLI prints: ``text`` on stdout, one ``warning: ...`` line per warning."""

    text: str
    warnings: list[str]


@dataclass
class Run:
    """One run folder, read and summarised. ``rows`` are the metrics.csv evaluations."""

    path: Path
    name: str
    status: str
    complete: bool
    mode: Optional[str]
    b: Optional[float]
    lr: Optional[float]
    ascent_lr: Optional[float]
    seed: Optional[int]
    epochs: Optional[int]
    model: str
    data: str
    group_key: str
    context_key: str
    settings: dict[str, Any]
    rows: list[dict[str, Optional[float]]]
    best_row: Optional[dict[str, Optional[float]]] = None
    best_accuracy_row: Optional[dict[str, Optional[float]]] = None
    loss_up_accuracy_up: list[dict[str, Optional[float]]] = field(default_factory=list)
    group: Optional["Group"] = None
    diff_to_baseline: Optional[float] = None
    diff_to_baseline_pct: Optional[float] = None

    @property
    def best_val_loss(self) -> Optional[float]:
        return self.best_row["val_loss"] if self.best_row else None

    @property
    def final_row(self) -> dict[str, Optional[float]]:
        return self.rows[-1]

    @property
    def counts_in_statistics(self) -> bool:
        return self.complete and self.best_val_loss is not None


@dataclass(frozen=True)
class Sample:
    """The best validation losses of a seed group's complete runs."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n

    @property
    def sd(self) -> Optional[float]:
        """Sample standard deviation (n − 1); None for a single seed."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (self.n - 1))


@dataclass
class Group:
    """Runs that differ only by seed."""

    id: str
    label: str
    key: str
    context_key: str
    mode: Optional[str]
    settings: dict[str, Any]
    runs: list[Run]

    @property
    def sample(self) -> Optional[Sample]:
        values = tuple(run.best_val_loss for run in self.runs if run.counts_in_statistics)
        return Sample(values) if values else None  # type: ignore[arg-type]

    @property
    def is_baseline(self) -> bool:
        return self.mode == "baseline"

    @property
    def left_out(self) -> int:
        return sum(not run.counts_in_statistics for run in self.runs)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "welch" or "pooled"
    df: float


@dataclass
class Comparison:
    """A seed group against its baseline group: difference of mean best validation loss."""

    group: Group
    baseline: Group
    difference: float
    difference_pct: Optional[float]
    interval: Optional[Interval]
    verdict: str
    note: str


@dataclass
class Report:
    runs: list[Run]
    groups: list[Group]
    comparisons: list[Comparison]
    warnings: list[str]


# ---------------------------------------------------------------------------
# Student's t distribution, in pure Python (scipy and numpy are too heavy to import)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (Numerical Recipes §6.4, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast only on this side of the mean; use symmetry.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_pdf(t: float, df: float) -> float:
    log_density = (
        math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        - (df + 1) / 2 * math.log1p(t * t / df)
    )
    return math.exp(log_density)


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T ≤ t) = p, for any real df > 0 (Welch's df is not an integer)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 2.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2.0
    # Newton steps on the cdf, falling back to bisection when a step leaves the bracket.
    t = (low + high) / 2.0
    for _ in range(100):
        error = student_t_cdf(t, df) - p
        if error > 0:
            high = t
        else:
            low = t
        step = error / max(student_t_pdf(t, df), 1e-300)
        candidate = t - step
        if not low < candidate < high:
            candidate = (low + high) / 2.0
        if abs(candidate - t) <= 1e-12 * max(1.0, abs(t)):
            return candidate
        t = candidate
    return t


def difference_interval(group: Sample, baseline: Sample, level: float = CI_LEVEL) -> Optional[Interval]:
    """Interval for mean(group) − mean(baseline).

    Welch's t when both groups have two or more seeds (no equal-variance assumption).
    When one side has a single seed, its spread is unknown, so the other side's spread
    stands in for it (Student's pooled interval, which assumes equal spread). With one
    seed on both sides there is no noise estimate at all: None.
    """
    if group.n < 2 and baseline.n < 2:
        return None
    difference = group.mean - baseline.mean
    if group.n >= 2 and baseline.n >= 2:
        var_g, var_b = group.sd ** 2 / group.n, baseline.sd ** 2 / baseline.n  # type: ignore[operator]
        standard_error = math.sqrt(var_g + var_b)
        if standard_error == 0.0:
            df = float(group.n + baseline.n - 2)
        else:
            # Welch–Satterthwaite degrees of freedom.
            df = (var_g + var_b) ** 2 / (var_g**2 / (group.n - 1) + var_b**2 / (baseline.n - 1))
        method = "welch"
    else:
        spread_from = group if group.n >= 2 else baseline
        df = float(spread_from.n - 1)
        standard_error = spread_from.sd * math.sqrt(1.0 / group.n + 1.0 / baseline.n)  # type: ignore[operator]
        method = "pooled"
    half_width = student_t_quantile(0.5 + level / 2.0, df) * standard_error
    return Interval(difference - half_width, difference + half_width, method, df)


def verdict_for(interval: Optional[Interval]) -> str:
    if interval is None:
        return "one seed per group: no noise estimate"
    if interval.low <= 0.0 <= interval.high:
        return "within seed noise"
    return "lower (better)" if interval.high < 0.0 else "higher (worse)"


# ---------------------------------------------------------------------------
# Discovery: which folders are runs


def discover_runs(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Expand the arguments into run folders (in order, without duplicates) + warnings."""
    found: dict[str, Path] = {}
    warnings: list[str] = []
    for argument in paths:
        for candidate in _expand_glob(Path(argument), warnings):
            for run_dir in _runs_at(candidate, warnings):
                found.setdefault(os.path.realpath(run_dir), run_dir)
    return list(found.values()), warnings


def _expand_glob(path: Path, warnings: list[str]) -> list[Path]:
    text = str(path)
    # Shells expand globs; a quoted glob reaches us as is and is expanded here.
    if path.exists() or not any(char in text for char in "*?["):
        return [path]
    matches = sorted(glob.glob(text))
    if not matches:
        warnings.append(f"{text}: no file or folder matches")
    return [Path(match) for match in matches]


def _is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def _runs_at(path: Path, warnings: list[str]) -> list[Path]:
    if not path.exists():
        warnings.append(f"{path}: no such folder; skipped")
        return []
    if path.is_file():
        if path.name in RUN_FILES:  # e.g. runs/*/summary.json: the folder is meant
            return [path.parent]
        warnings.append(f"{path}: not a run folder (a file); skipped")
        return []
    if _is_run_dir(path):
        return [path]
    # A parent folder such as runs/, or a sweep folder one level further down.
    for depth in (1, 2):
        runs = [child for child in _subfolders(path, depth) if _is_run_dir(child)]
        if runs:
            return runs
    warnings.append(f"{path}: not a run folder (no {CONFIG_FILE}, {METRICS_FILE} or {SUMMARY_FILE}) and holds no runs; skipped")
    return []


def _subfolders(path: Path, depth: int) -> list[Path]:
    level = [path]
    for _ in range(depth):
        level = [child for folder in level for child in _listed_folders(folder)]
    return level


def _listed_folders(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:  # unreadable: the caller reports the folder as holding no runs
        return []
    return [Path(entry.path) for entry in entries if entry.is_dir() and not entry.name.startswith(".")]


# ---------------------------------------------------------------------------
# Loading one run


def parse_metrics(text: str) -> tuple[list[dict[str, Optional[float]]], list[str]]:
    """Parse metrics.csv text into rows of floats, keeping every well-formed row.

    A row is dropped (and reported) when it has the wrong number of cells — a line cut
    short by a crash — or a non-number in a column compare uses, or no epoch or val_loss.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        return [], ["metrics.csv is empty"]
    header = [name.strip() for name in lines[0].lstrip("\ufeff").split(",")]
    if "epoch" not in header or "val_loss" not in header:
        return [], ["metrics.csv has no epoch and val_loss columns"]
    rows: list[dict[str, Optional[float]]] = []
    truncated: list[int] = []
    unreadable: list[int] = []
    last_line_number = len(lines)
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")  # only numbers: no quoting, so a plain split is exact
        if len(cells) != len(header):
            (truncated if line_number == last_line_number and len(cells) < len(header) else unreadable).append(line_number)
            continue
        row = _parse_row(header, cells)
        if row is None:
            unreadable.append(line_number)
        else:
            rows.append(row)
    problems = []
    if truncated:
        problems.append(f"metrics.csv line {truncated[0]} is cut short")
    if unreadable:
        shown = ", ".join(str(n) for n in unreadable[:5]) + (", …" if len(unreadable) > 5 else "")
        problems.append(f"metrics.csv has {len(unreadable)} unreadable row{'s' if len(unreadable) > 1 else ''} (line {shown})")
    return rows, problems


def _parse_row(header: list[str], cells: list[str]) -> Optional[dict[str, Optional[float]]]:
    row: dict[str, Optional[float]] = {}
    for name, cell in zip(header, cells):
        cell = cell.strip()
        if not cell:
            row[name] = None
            continue
        try:
            row[name] = float(cell)
        except ValueError:
            if name in METRICS_USED:
                return None
            row[name] = None  # a column compare does not use: no reason to drop the row
    if row.get("epoch") is None or row.get("val_loss") is None:
        return None
    return row


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _read_mapping(path: Path, parse: Any, what: str, problems: list[str]) -> Optional[dict[str, Any]]:
    """Read a YAML or JSON file that must hold a mapping; a problem message otherwise."""
    try:
        text = _read_text(path)
    except OSError as exc:
        problems.append(f"cannot read {what}: {exc.strerror or exc}")
        return None
    if text is None:
        problems.append(f"no {what}")
        return None
    try:
        value = parse(text)
    except (ValueError, yaml.YAMLError):
        problems.append(f"{what} is corrupt")
        return None
    if not isinstance(value, dict):
        problems.append(f"{what} is corrupt (not a mapping)")
        return None
    return value


def _section(config: Optional[dict[str, Any]], name: str) -> dict[str, Any]:
    value = (config or {}).get(name)
    return value if isinstance(value, dict) else {}


def _describe_model(model: dict[str, Any]) -> str:
    tiny = model.get("tiny")
    if isinstance(tiny, dict):
        return f"tiny-bert(L{tiny.get('num_layers')},H{tiny.get('hidden_size')},A{tiny.get('num_heads')})"
    return str(model.get("name_or_path") or "?")


def _describe_data(data: dict[str, Any]) -> str:
    if data.get("dataset"):
        return str(data["dataset"]) + (f"/{data['subset']}" if data.get("subset") else "")
    if data.get("train_file"):
        return Path(str(data["train_file"])).name
    return "?"


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, dict):
            flat.update(_flatten(item, dotted + "."))
        else:
            flat[dotted] = item
    return flat


def _as_float(value: Any) -> Optional[float]:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _as_int(value: Any) -> Optional[int]:
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _age_s(summary: dict[str, Any], summary_path: Path, now: float) -> Optional[float]:
    try:
        updated = datetime.fromisoformat(str(summary["updated_at"])).timestamp()
    except (KeyError, ValueError, TypeError):
        try:
            updated = summary_path.stat().st_mtime
        except OSError:
            return None
    return max(0.0, now - updated)


def _format_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _read_metrics_file(path: Path, problems: list[str]) -> list[dict[str, Optional[float]]]:
    try:
        text = _read_text(path)
    except OSError as exc:
        problems.append(f"cannot read {METRICS_FILE}: {exc.strerror or exc}")
        return []
    if text is None:
        problems.append(f"no {METRICS_FILE}")
        return []
    rows, found = parse_metrics(text)
    problems.extend(found)
    return rows


def load_run(path: Path, now: float) -> tuple[Optional[Run], Optional[str]]:
    """Read one run folder: the run (None if unusable) and at most one warning line."""
    problems: list[str] = []
    config = _read_mapping(path / CONFIG_FILE, lambda text: yaml.load(text, Loader=_YAML_LOADER), CONFIG_FILE, problems)
    summary = _read_mapping(path / SUMMARY_FILE, json.loads, SUMMARY_FILE, problems)
    rows = _read_metrics_file(path / METRICS_FILE, problems)
    status = str(summary.get("status", "unknown")) if summary else "unknown"
    if not rows:
        return None, f"{path}: {'; '.join(problems + [f'no evaluations (status {status})'])}; skipped"

    model, data, train = _section(config, "model"), _section(config, "data"), _section(config, "train")
    summary = summary or {}
    epochs = _as_int(_first(train.get("epochs"), summary.get("epochs")))
    last_epoch = rows[-1]["epoch"] or 0.0
    complete = status == "completed" or (status == "unknown" and epochs is not None and last_epoch >= epochs - 1e-9)
    run = Run(
        path=path,
        name=path.name,
        status=status,
        complete=complete,
        mode=_first(train.get("mode"), summary.get("mode")),
        b=_as_float(_first(train.get("b"), summary.get("b"))),
        lr=_as_float(_first(train.get("lr"), summary.get("lr"))),
        ascent_lr=_as_float(_first(train.get("ascent_lr"), summary.get("ascent_lr"))),
        seed=_as_int(_first(train.get("seed"), summary.get("seed"))),
        epochs=epochs,
        model=str(summary.get("model") or _describe_model(model)),
        data=str(summary.get("data") or _describe_data(data)),
        group_key="",
        context_key="",
        settings={},
        rows=rows,
    )
    _set_group_keys(run, config, model, data, train, summary)
    _summarise_curves(run)

    # One warning line per run: each problem, then what was done about it.
    if any(problem.startswith("metrics.csv") for problem in problems):
        problems.append(f"kept {len(rows)} readable evaluation{'s' if len(rows) > 1 else ''}")
    if config is None:
        problems.append("grouped by the settings in summary.json" if summary else "grouped on its own")
    consequence = _status_consequence(run, summary, path / SUMMARY_FILE, now, last_epoch)
    if consequence:
        problems.append(consequence)
    return run, (f"{path}: {'; '.join(problems)}" if problems else None)


def _set_group_keys(
    run: Run,
    config: Optional[dict[str, Any]],
    model: dict[str, Any],
    data: dict[str, Any],
    train: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """Runs with equal ``group_key`` differ only by seed; ``context_key`` is model + data.

    runtime, output and meta never enter: they say how and where a run ran, not what
    it learned. Without config.yaml the summary's short descriptions stand in, under a
    different key shape, so such runs never silently join a fully described group.
    """
    if config is not None:
        experiment_train = {k: v for k, v in train.items() if k not in NOT_EXPERIMENT_KEYS}
        settings = {"model": model, "data": data, "train": experiment_train}
        context = {"model": model, "data": data}
    elif summary:
        context = {"from_summary": {"model": run.model, "data": run.data}}
        fields = ("mode", "b", "lr", "ascent_lr", "epochs")
        settings = {**context, "train": {key: summary.get(key) for key in fields}}
    else:
        settings = {"folder": str(run.path)}
        context = settings
    run.settings = _flatten(settings)
    run.group_key = _canonical(settings)
    run.context_key = _canonical(context)


def _status_consequence(run: Run, summary: dict[str, Any], summary_path: Path, now: float, last_epoch: float) -> Optional[str]:
    progress = f"epoch {_format_epoch(last_epoch)}" + (f" of {run.epochs}" if run.epochs else "")
    left_out = "shown as incomplete, left out of seed statistics"
    if run.status == "completed":
        return None
    if run.status == "running":
        age = _age_s(summary, summary_path, now)
        if age is not None and age > STALE_AFTER_S:
            return f"status running but not updated for {_format_age(age)} (was it killed?), at {progress}; {left_out}"
        return f"still running, at {progress}; {left_out}"
    if run.status == "failed":
        error = str(summary.get("error") or "no error message").splitlines()[0][:120]
        return f"failed at {progress} ({error}); {left_out}"
    if run.status == "unknown":
        if run.complete:
            return f"status unknown, but metrics.csv reaches the configured {run.epochs} epochs; counted as complete"
        return f"status unknown, at {progress}; {left_out}"
    return f"{run.status} at {progress}; {left_out}"


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def _summarise_curves(run: Run) -> None:
    """Best loss, best accuracy and the evaluations where loss and accuracy rose together."""
    finite_loss = [row for row in run.rows if _finite(row["val_loss"])]
    run.best_row = min(finite_loss, key=lambda row: row["val_loss"]) if finite_loss else None  # type: ignore[arg-type,return-value]
    with_accuracy = [row for row in run.rows if _finite(row.get("val_accuracy"))]
    run.best_accuracy_row = max(with_accuracy, key=lambda row: row["val_accuracy"]) if with_accuracy else None  # type: ignore[arg-type,return-value]
    run.loss_up_accuracy_up = []
    for previous, current in zip(run.rows, run.rows[1:]):
        losses = previous["val_loss"], current["val_loss"]
        accuracies = previous.get("val_accuracy"), current.get("val_accuracy")
        if not all(_finite(v) for v in (*losses, *accuracies)):
            continue
        if losses[1] > losses[0] and accuracies[1] > accuracies[0]:  # type: ignore[operator]
            run.loss_up_accuracy_up.append(current)


# ---------------------------------------------------------------------------
# Grouping and comparing


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Seed groups, ordered by mean best validation loss (groups without one last)."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.group_key, []).append(run)
    groups = [
        Group(id="", label="", key=key, context_key=members[0].context_key, mode=members[0].mode,
              settings=members[0].settings, runs=members)
        for key, members in by_key.items()
    ]
    groups.sort(key=lambda g: (g.sample is None, g.sample.mean if g.sample else 0.0, g.runs[0].name))
    labels = _group_labels(groups)
    for number, (group, label) in enumerate(zip(groups, labels), start=1):
        group.id, group.label = f"g{number}", label
        for run in group.runs:
            run.group = group
    return groups


def _group_labels(groups: Sequence[Group]) -> list[str]:
    """mode, b, lr, ascent_lr, plus whatever else differs between the groups."""
    all_keys = sorted({key for group in groups for key in group.settings})
    varying = [
        key for key in all_keys
        if key not in LABEL_KEYS and not key.endswith(".mode")
        and len({_canonical(group.settings[key]) for group in groups if key in group.settings}) > 1
    ]
    labels = []
    for group in groups:
        run = group.runs[0]
        parts = [run.mode or "?"]
        for key, value in (("b", run.b), ("lr", run.lr), ("alr", run.ascent_lr)):
            if value is not None:
                parts.append(f"{key}={value:g}")
        for key in varying:
            if key in group.settings and key.rsplit(".", 1)[-1] not in ("b", "lr", "ascent_lr"):
                parts.append(f"{key.rsplit('.', 1)[-1]}={_short_value(group.settings[key])}")
        if "folder" in group.settings:
            parts.append(f"({run.name})")
        elif "from_summary.model" in group.settings:
            parts.append("[no config.yaml]")
        labels.append(" ".join(parts))
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[index] = f"{label} #{seen[label]}"
    return labels


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1]
    return str(value)


def _training_distance(a: Group, b: Group) -> int:
    """How many training settings (other than the mode's own) two groups disagree on."""
    keys = {k for k in (*a.settings, *b.settings) if k.startswith("train.")} - {f"train.{k}" for k in ("mode", "b", "ascent_lr")}
    return sum(a.settings.get(key) != b.settings.get(key) for key in keys)


def choose_baselines(groups: Sequence[Group]) -> dict[str, tuple[Group, list[Group]]]:
    """For each non-baseline group: its baseline group and the other candidates.

    A baseline group matches when it has the same model and data sections; among
    several, the closest training settings win (a baseline at the same lr and epochs),
    then the one with the most seeds.
    """
    baselines = [g for g in groups if g.is_baseline and g.sample is not None]
    chosen = {}
    for group in groups:
        if group.is_baseline:
            continue
        candidates = [b for b in baselines if b.context_key == group.context_key]
        if candidates:
            candidates.sort(key=lambda b: (_training_distance(group, b), -b.sample.n, b.id))  # type: ignore[union-attr]
            chosen[group.id] = (candidates[0], candidates[1:])
    return chosen


def compare_groups(groups: Sequence[Group]) -> list[Comparison]:
    """Each non-baseline group with complete runs against its baseline group."""
    chosen = choose_baselines(groups)
    return [
        _compare(group, *chosen[group.id])
        for group in groups
        if group.id in chosen and group.sample is not None
    ]


def _compare(group: Group, baseline: Group, others: Sequence[Group]) -> Comparison:
    sample, reference = group.sample, baseline.sample
    assert sample is not None and reference is not None
    difference = sample.mean - reference.mean
    interval = difference_interval(sample, reference)
    notes = []
    if interval is not None and interval.method == "welch":
        notes.append(f"Welch t, df={interval.df:.1f}")
    elif interval is not None:
        single, spread = (group, baseline) if sample.n < 2 else (baseline, group)
        notes.append(f"one seed in {single.id}: interval uses {spread.id}'s seed spread (Student t, df={interval.df:.0f})")
    if others:
        notes.append(f"{len(others) + 1} baseline groups match; chose {baseline.id} (closest training settings, then most seeds)")
    return Comparison(
        group=group,
        baseline=baseline,
        difference=difference,
        difference_pct=100.0 * difference / reference.mean if reference.mean else None,
        interval=interval,
        verdict=verdict_for(interval),
        note="; ".join(notes),
    )


def _set_run_differences(groups: Sequence[Group]) -> None:
    """Each run against its baseline group's mean, incomplete runs too (as they stand)."""
    for group_id, (baseline, _) in choose_baselines(groups).items():
        reference = baseline.sample.mean  # type: ignore[union-attr]
        group = next(g for g in groups if g.id == group_id)
        for run in group.runs:
            if run.best_val_loss is not None:
                run.diff_to_baseline = run.best_val_loss - reference
                run.diff_to_baseline_pct = 100.0 * run.diff_to_baseline / reference if reference else None


def _sort_key(run: Run) -> tuple[bool, float, str]:
    best = run.best_val_loss
    return (best is None, best if best is not None else 0.0, str(run.path))


def _disambiguate_names(runs: Sequence[Run]) -> None:
    """Two folders named alike (runs-a/x, runs-b/x) are told apart by their parent."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.path.parent.name}/{run.path.name}"


def build_report(paths: Sequence[Path], now: Optional[float] = None) -> Report:
    """Discover, load, group and compare. Raises FloodError when no run is usable."""
    now = time.time() if now is None else now
    run_dirs, warnings = discover_runs(paths)
    shown = ", ".join(str(p) for p in paths) or "(no paths given)"
    if not run_dirs:
        raise FloodError(f"no runs found in {shown}; pass run folders or folders that hold them (each has {METRICS_FILE})")
    runs: list[Run] = []
    skipped: list[str] = []
    for run_dir in run_dirs:
        run, warning = load_run(run_dir, now)
        if warning:
            warnings.append(warning)
        if run is None:
            skipped.append(warning or str(run_dir))
        else:
            runs.append(run)
    if not runs:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise FloodError(f"no usable runs in {shown}: {skipped[0]}{more}")
    _disambiguate_names(runs)
    groups = group_runs(runs)
    comparisons = compare_groups(groups)
    _set_run_differences(groups)
    runs.sort(key=_sort_key)
    return Report(runs=runs, groups=groups, comparisons=comparisons, warnings=warnings)


# ---------------------------------------------------------------------------
# Rendering: one set of tables, three formats


def _format_epoch(epoch: Optional[float]) -> str:
    if epoch is None:
        return ""
    return f"{epoch:g}" if float(epoch).is_integer() else f"{epoch:.2f}"


def _format_number(value: Optional[float], digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _format_g(value: Optional[float]) -> str:
    return "" if value is None else f"{value:g}"


def _at(row: Optional[dict[str, Optional[float]]]) -> str:
    if row is None:
        return ""
    step = row.get("step")
    return _format_epoch(row["epoch"]) + (f" ({step:.0f})" if step is not None else "")


def _status_cell(run: Run) -> str:
    if run.status == "completed":
        return "completed"
    progress = _format_epoch(run.final_row["epoch"]) + (f"/{run.epochs}" if run.epochs else "")
    return f"{run.status} {progress}" + ("" if run.complete else " (incomplete)")


def _difference_cell(value: Optional[float], pct: Optional[float]) -> str:
    if value is None:
        return ""
    return _format_number(value, sign=True) + (f" ({pct:+.2f}%)" if pct is not None else "")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    right_aligned: frozenset[str] = frozenset()
    footnote: str = ""


def runs_table(report: Report) -> Table:
    rows = []
    for run in report.runs:
        best = run.best_row
        rows.append([
            run.name,
            run.group.id if run.group else "",
            run.mode or "?",
            _format_g(run.b),
            _format_g(run.lr),
            _format_g(run.ascent_lr),
            "" if run.seed is None else str(run.seed),
            "" if run.epochs is None else str(run.epochs),
            _format_number(run.best_val_loss) if best else "nan",
            _at(best),
            _format_number(best.get("val_accuracy")) if best else "",
            _format_number(run.final_row["val_loss"]),
            _difference_cell(run.diff_to_baseline, run.diff_to_baseline_pct),
            _status_cell(run),
        ])
    has_baseline = any(run.diff_to_baseline is not None for run in report.runs)
    columns = ["run", "group", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "best val_loss",
               "at epoch (step)", "val_acc there", "final val_loss", "Δ vs baseline", "status"]
    if not has_baseline:
        index = columns.index("Δ vs baseline")
        columns.pop(index)
        for row in rows:
            row.pop(index)
    footnote = "" if has_baseline else "No baseline of the same model and data among these runs: no differences shown."
    if all(run.mode == "baseline" for run in report.runs):
        footnote = ""
    return Table(
        title="Runs, sorted by best validation loss",
        columns=columns,
        rows=rows,
        right_aligned=frozenset({"b", "lr", "ascent_lr", "seed", "epochs", "best val_loss", "val_acc there",
                                 "final val_loss", "Δ vs baseline"}),
        footnote=footnote,
    )


def groups_table(report: Report) -> Table:
    rows = []
    for group in report.groups:
        sample = group.sample
        mean_sd = ""
        if sample is not None:
            mean_sd = _format_number(sample.mean) + (f" ± {sample.sd:.4f}" if sample.sd is not None else " (one seed)")
        rows.append([
            group.id,
            group.label,
            str(sample.n if sample else 0),
            mean_sd,
            _format_number(min(sample.values)) if sample else "",
            _format_number(max(sample.values)) if sample else "",
            f"{group.left_out} incomplete" if group.left_out else "",
        ])
    return Table(
        title="Seed groups: best validation loss over runs that differ only by seed (mean ± sd)",
        columns=["group", "settings", "n", "mean ± sd", "min", "max", "left out"],
        rows=rows,
        right_aligned=frozenset({"n", "mean ± sd", "min", "max"}),
    )


def comparisons_table(report: Report) -> Table:
    rows = []
    for comparison in report.comparisons:
        interval = comparison.interval
        rows.append([
            f"{comparison.group.id} {comparison.group.label}",
            f"{comparison.baseline.id} (n={comparison.baseline.sample.n})",  # type: ignore[union-attr]
            str(comparison.group.sample.n),  # type: ignore[union-attr]
            _difference_cell(comparison.difference, comparison.difference_pct),
            f"[{interval.low:+.4f}, {interval.high:+.4f}]" if interval else "",
            comparison.verdict,
            comparison.note,
        ])
    return Table(
        title=f"Against the baseline: mean best validation loss, group − baseline, {CI_LEVEL:.0%} interval",
        columns=["group", "baseline", "n", "difference", f"{CI_LEVEL:.0%} interval", "verdict", "note"],
        rows=rows,
        right_aligned=frozenset({"n", "difference"}),
    )


def curves_table(report: Report) -> Table:
    rows = []
    differ = False
    for run in report.runs:
        best, best_accuracy = run.best_row, run.best_accuracy_row
        apart = best is not None and best_accuracy is not None and best is not best_accuracy
        differ = differ or apart
        rows.append([
            run.name,
            f"{_at(best)}: {_format_number(run.best_val_loss)}" if best else "",
            (f"{_at(best_accuracy)}: {_format_number(best_accuracy.get('val_accuracy'))}" if best_accuracy else "")
            + (" *" if apart else ""),
            ", ".join(_format_epoch(row["epoch"]) for row in run.loss_up_accuracy_up) or "none",
        ])
    return Table(
        title="Validation loss up while validation accuracy up (epochs), and where each was best",
        columns=["run", "best val_loss at epoch (step)", "best val_acc at epoch (step)", "loss ↑ and acc ↑ at epoch"],
        rows=rows,
        footnote=(
            "* best loss and best accuracy at different evaluations: which checkpoint to keep depends on the metric you report."
            if differ else ""
        ),
    )


def report_tables(report: Report) -> list[Table]:
    tables = [runs_table(report), groups_table(report)]
    if report.comparisons:
        tables.append(comparisons_table(report))
    tables.append(curves_table(report))
    return tables


def render_terminal(tables: Sequence[Table]) -> str:
    """Plain aligned columns, one line per row.

    Deliberately not rich: rich measures and wraps every cell, about a second for a
    thousand runs, and folded cells make a wide table harder to read than a long line
    (`| less -S` scrolls sideways; --markdown and --csv suit other uses).
    """
    blocks = []
    for table in tables:
        widths = [max([len(column), *(len(row[i]) for row in table.rows)]) for i, column in enumerate(table.columns)]
        right = [column in table.right_aligned for column in table.columns]

        def line(cells: Sequence[str]) -> str:
            padded = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right))
            return " " + "   ".join(padded).rstrip()

        lines = [table.title, "", line(table.columns), " " + "─" * (sum(widths) + 3 * (len(widths) - 1))]
        lines += [line(row) for row in table.rows]
        if table.footnote:
            lines += ["", table.footnote]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_markdown(tables: Sequence[Table]) -> str:
    blocks = []
    for table in tables:
        lines = [f"**{table.title}**", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join("---:" if c in table.right_aligned else "---" for c in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        if table.footnote:
            lines += ["", table.footnote]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------
# Machine-readable forms: JSON and CSV


def _json_number(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def _row_get(row: Optional[dict[str, Optional[float]]], key: str) -> Optional[float]:
    return _json_number(row.get(key)) if row else None


def _as_step(value: Optional[float]) -> Optional[int]:
    return int(value) if value is not None and math.isfinite(value) else None


def run_record(run: Run) -> dict[str, Any]:
    best, best_accuracy, final = run.best_row, run.best_accuracy_row, run.final_row
    return {
        "name": run.name,
        "path": str(run.path),
        "group": run.group.id if run.group else None,
        "status": run.status,
        "complete": run.complete,
        "mode": run.mode,
        "b": run.b,
        "lr": run.lr,
        "ascent_lr": run.ascent_lr,
        "seed": run.seed,
        "epochs": run.epochs,
        "model": run.model,
        "data": run.data,
        "evaluations": len(run.rows),
        "last_epoch": _row_get(final, "epoch"),
        "best_val_loss": _row_get(best, "val_loss"),
        "best_epoch": _row_get(best, "epoch"),
        "best_step": _as_step(_row_get(best, "step")),
        "val_accuracy_at_best": _row_get(best, "val_accuracy"),
        "best_val_accuracy": _row_get(best_accuracy, "val_accuracy"),
        "best_val_accuracy_epoch": _row_get(best_accuracy, "epoch"),
        "best_val_accuracy_step": _as_step(_row_get(best_accuracy, "step")),
        "final_val_loss": _row_get(final, "val_loss"),
        "final_val_accuracy": _row_get(final, "val_accuracy"),
        "diff_to_baseline": _json_number(run.diff_to_baseline),
        "diff_to_baseline_pct": _json_number(run.diff_to_baseline_pct),
        "loss_up_accuracy_up": [
            {
                "epoch": _row_get(row, "epoch"),
                "step": _as_step(_row_get(row, "step")),
                "val_loss": _row_get(row, "val_loss"),
                "val_accuracy": _row_get(row, "val_accuracy"),
                "val_loss_top10_share": _row_get(row, "val_loss_top10_share"),
            }
            for row in run.loss_up_accuracy_up
        ],
    }


def group_record(group: Group) -> dict[str, Any]:
    sample = group.sample
    return {
        "id": group.id,
        "label": group.label,
        "mode": group.mode,
        "baseline": group.is_baseline,
        "runs": [run.name for run in group.runs],
        "n": sample.n if sample else 0,
        "n_left_out": group.left_out,
        "best_val_loss_mean": sample.mean if sample else None,
        "best_val_loss_sd": sample.sd if sample else None,
        "best_val_loss_min": min(sample.values) if sample else None,
        "best_val_loss_max": max(sample.values) if sample else None,
        "settings": group.settings,
    }


def comparison_record(comparison: Comparison) -> dict[str, Any]:
    interval = comparison.interval
    sample, reference = comparison.group.sample, comparison.baseline.sample
    assert sample is not None and reference is not None
    return {
        "group": comparison.group.id,
        "baseline": comparison.baseline.id,
        "n": sample.n,
        "n_baseline": reference.n,
        "mean": sample.mean,
        "baseline_mean": reference.mean,
        "difference": comparison.difference,
        "difference_pct": comparison.difference_pct,
        "ci_level": CI_LEVEL,
        "ci_low": interval.low if interval else None,
        "ci_high": interval.high if interval else None,
        "method": interval.method if interval else None,
        "df": interval.df if interval else None,
        "verdict": comparison.verdict,
        "note": comparison.note,
    }


def report_json(report: Report) -> str:
    document = {
        "version": JSON_VERSION,
        "runs": [run_record(run) for run in report.runs],
        "groups": [group_record(group) for group in report.groups],
        "comparisons": [comparison_record(c) for c in report.comparisons],
        "warnings": list(report.warnings),
    }
    return json.dumps(document, indent=2, allow_nan=False, default=str)


CSV_COLUMNS = (
    "name", "group", "group_label", "mode", "b", "lr", "ascent_lr", "seed", "epochs", "model", "data",
    "best_val_loss", "best_epoch", "best_step", "val_accuracy_at_best", "best_val_accuracy",
    "best_val_accuracy_epoch", "final_val_loss", "final_val_accuracy", "diff_to_baseline",
    "diff_to_baseline_pct", "loss_up_accuracy_up_epochs", "status", "complete", "path",
)


def write_csv(report: Report, path: Path) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for run in report.runs:
                record = run_record(run)
                record["group_label"] = run.group.label if run.group else ""
                record["loss_up_accuracy_up_epochs"] = ";".join(_format_epoch(r["epoch"]) for r in run.loss_up_accuracy_up)
                writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    except OSError as exc:
        raise FloodError(f"cannot write CSV {path}: {exc.strerror or exc}; pass a writable --csv path") from None


# ---------------------------------------------------------------------------
# The command


def compare_command(
    paths: Sequence[Path],
    plot: Optional[Path] = None,
    csv_path: Optional[Path] = None,
    markdown: bool = False,
    as_json: bool = False,
    x_axis: str = "epoch",
    now: Optional[float] = None,
) -> CompareOutput:
    """Compare run folders; what `flood compare` prints, plus files for --plot / --csv."""
    if x_axis not in X_AXES:
        raise FloodError(f"--x {x_axis!r} is not an axis; use epoch or step")
    if markdown and as_json:
        raise FloodError("--markdown and --json print different formats; pick one")
    report = build_report(paths, now=now)
    written = []
    if csv_path is not None:
        write_csv(report, csv_path)
        written.append(f"wrote {csv_path}")
    if plot is not None:
        from flood_cli.plots import plot_runs

        plot_runs(report, plot, x_axis=x_axis)
        written.append(f"wrote {plot}")
    if as_json:
        text = report_json(report)
    else:
        tables = report_tables(report)
        text = render_markdown(tables) if markdown else render_terminal(tables)
        if written:
            text += "\n\n" + "\n".join(written)
    return CompareOutput(text=text, warnings=list(report.warnings))
