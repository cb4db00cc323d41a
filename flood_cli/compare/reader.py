"""Read one run folder for `flood compare`: config.yaml, metrics.csv, summary.json.

Tolerant by design: a run still in progress, a metrics.csv cut short by a crash, a
half-written summary or a missing config each cost one warning line, and the run is
still shown with what could be read. Only a run without a single evaluation is skipped,
a run whose config.yaml flood refuses to read (see flood_cli.core.safe_yaml: aliases that
expand too far, a recursive alias, a key given twice), since its settings are unclear,
and a run with a file that is not a regular file (a named pipe, a link to /dev/zero) or
is over its cap (flood_cli.runs.folder.MAX_METRICS_BYTES and the two below it): such a file is
never read, so a run folder from someone else cannot stall `flood compare`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from flood_cli.compare.model import LOSS, Judged, Row, Run
from flood_cli.config.basics import describe_data, describe_model
from flood_cli.core import safe_yaml
from flood_cli.runs.folder import (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunFileRefused,
    read_run_file,
)

# The metrics.csv columns compare reads; a row with garbage in one of them is dropped.
METRICS_USED = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_loss_top10_share")
# Keys of the train section that do not change what is learned: runs that differ only
# in these are repeats of one experiment (a seed group).
NOT_EXPERIMENT_KEYS = ("seed", "eval_batch_size")
# A "running" run whose summary has not changed for this long may have been killed.
STALE_AFTER_S = 3600.0



def _parse_config(text: str) -> Any:
    return safe_yaml.load(text, fast=True)  # libyaml where installed: about 10x faster


def load_run(path: Path, now: float) -> tuple[Run | None, str | None]:
    """Read one run folder: the run (None if unusable) and at most one warning line."""
    problems: list[str] = []
    try:
        config = _read_mapping(path / CONFIG_FILE, _parse_config, problems)
        summary = _read_mapping(path / SUMMARY_FILE, json.loads, problems)
        metrics_text = _read_file(path / METRICS_FILE, problems)
    except safe_yaml.RefusedYaml as exc:
        # Aliases that expand too far, a recursive alias, a key given twice: which
        # settings the run had is unclear, and grouping it by guesswork would mislead.
        return None, f"{path}: {CONFIG_FILE}: {exc.problem}; skipped"
    except RunFileRefused as exc:
        # A named pipe, a link to a device, a file over its cap (runs.MAX_METRICS_BYTES…):
        # not what flood writes, and never read; the other runs are compared.
        return None, f"{path}: {exc.problem}; skipped"
    rows: list[Row] = []
    if metrics_text is not None:
        rows, found = parse_metrics(metrics_text)
        problems.extend(found)
    status = str(summary.get("status", "unknown")) if summary else "unknown"
    if not rows:
        return None, f"{path}: {'; '.join(problems + [f'no evaluations (status {status})'])}; skipped"

    model, data, train = _section(config, "model"), _section(config, "data"), _section(config, "train")
    summary = summary or {}
    epochs = _as_int(_first(train.get("epochs"), summary.get("epochs")))
    last_epoch = rows[-1]["epoch"] or 0.0
    complete = status == "completed" or (status == "unknown" and epochs is not None and last_epoch >= epochs - 1e-9)
    model_text = str(summary.get("model") or describe_model(model))
    data_text = str(summary.get("data") or describe_data(data))
    settings, context = _experiment(path, config, model, data, train, summary, model_text, data_text)
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
        model=model_text,
        data=data_text,
        group_key=canonical(settings),
        context_key=canonical(context),
        settings=_flatten(settings),
        rows=rows,
        stopped_at_step=_as_int(summary.get("stopped_at_step")) if summary.get("stopped_early") is True else None,
    )
    _summarise_curves(run)

    # One warning line per run: each problem, then what was done about it.
    if any(problem.startswith(METRICS_FILE) for problem in problems):
        problems.append(f"kept {len(rows)} readable evaluation{'s' if len(rows) > 1 else ''}")
    if config is None:
        problems.append("grouped by the settings in summary.json" if summary else "grouped on its own")
    consequence = _status_consequence(run, summary, path / SUMMARY_FILE, now, last_epoch)
    if consequence:
        problems.append(consequence)
    return run, (f"{path}: {'; '.join(problems)}" if problems else None)


# ---------------------------------------------------------------------------
# Files


def parse_metrics(text: str) -> tuple[list[Row], list[str]]:
    """Parse metrics.csv text into rows of floats, keeping every well-formed row.

    A row is dropped (and reported) when it has the wrong number of cells — a line cut
    short by a crash — or a non-number in a column compare uses, or no epoch or val_loss.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        return [], [f"{METRICS_FILE} is empty"]
    header = [name.strip() for name in lines[0].lstrip("\ufeff").split(",")]
    if "epoch" not in header or "val_loss" not in header:
        return [], [f"{METRICS_FILE} has no epoch and val_loss columns"]
    rows: list[Row] = []
    truncated: list[int] = []
    unreadable: list[int] = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")  # only numbers: no quoting, so a plain split is exact
        if len(cells) != len(header):
            cut_short = line_number == len(lines) and len(cells) < len(header)
            (truncated if cut_short else unreadable).append(line_number)
            continue
        row = _parse_row(header, cells)
        if row is None:
            unreadable.append(line_number)
        else:
            rows.append(row)
    problems = []
    if truncated:
        problems.append(f"{METRICS_FILE} line {truncated[0]} is cut short")
    if unreadable:
        shown = ", ".join(str(n) for n in unreadable[:5]) + (", …" if len(unreadable) > 5 else "")
        plural = "s" if len(unreadable) > 1 else ""
        problems.append(f"{METRICS_FILE} has {len(unreadable)} unreadable row{plural} (line {shown})")
    return rows, problems


def _parse_row(header: list[str], cells: list[str]) -> Row | None:
    row: Row = {}
    for name, cell in zip(header, cells, strict=True):
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


def _read_file(path: Path, problems: list[str]) -> str | None:
    """The file's text, or None and a problem message (missing or unreadable). Raises
    RunFileRefused for a file that is not regular or is over its cap (never read)."""
    try:
        return read_run_file(path).decode("utf-8", errors="replace")
    except FileNotFoundError:
        problems.append(f"no {path.name}")
    except OSError as exc:
        problems.append(f"cannot read {path.name}: {exc.strerror or exc}")
    return None


def _read_mapping(path: Path, parse: Callable[[str], Any], problems: list[str]) -> dict[str, Any] | None:
    """Read a YAML or JSON file that must hold a mapping; a problem message otherwise.
    Raises safe_yaml.RefusedYaml for YAML that is well formed but refused."""
    text = _read_file(path, problems)
    if text is None:
        return None
    try:
        value = parse(text)
    except safe_yaml.RefusedYaml:
        raise
    except (ValueError, RecursionError, yaml.YAMLError):  # RecursionError: JSON nested too deeply
        problems.append(f"{path.name} is corrupt")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path.name} is corrupt (not a mapping)")
        return None
    return value


# ---------------------------------------------------------------------------
# What the run is: settings, group keys, descriptions


def _experiment(
    path: Path,
    config: dict[str, Any] | None,
    model: dict[str, Any],
    data: dict[str, Any],
    train: dict[str, Any],
    summary: dict[str, Any],
    model_text: str,
    data_text: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings that define the run's seed group, and its context (model + data).

    runtime, output and meta never enter: they say how and where a run ran, not what
    it learned. Without config.yaml the summary's short descriptions stand in, under a
    different key shape, so such runs never silently join a fully described group.
    """
    if config is not None:
        experiment_train = {k: v for k, v in train.items() if k not in NOT_EXPERIMENT_KEYS}
        # A key set to null means what a key that older runs lack means: not a difference.
        model, data, experiment_train = (_without_nulls(section) for section in (model, data, experiment_train))
        return {"model": model, "data": data, "train": experiment_train}, {"model": model, "data": data}
    if summary:
        context = {"from_summary": {"model": model_text, "data": data_text}}
        fields = ("mode", "b", "lr", "ascent_lr", "epochs")
        return {**context, "train": {key: summary.get(key) for key in fields}}, context
    alone = {"folder": str(path)}
    return alone, alone


def _without_nulls(section: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_nulls(v) if isinstance(v, dict) else v for k, v in section.items() if v is not None}


def _section(config: dict[str, Any] | None, name: str) -> dict[str, Any]:
    value = (config or {}).get(name)
    return value if isinstance(value, dict) else {}


def canonical(value: Any) -> str:
    """A value as a stable string: equal settings, equal strings."""
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


def _first(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _as_float(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past 1.8e308
        return None


def _as_int(value: Any) -> int | None:
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


# ---------------------------------------------------------------------------
# Status and curves


def _status_consequence(run: Run, summary: dict[str, Any], summary_path: Path, now: float, last_epoch: float) -> str | None:
    progress = f"epoch {format_epoch(last_epoch)}" + (f" of {run.epochs}" if run.epochs else "")
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
            return f"status unknown, but {METRICS_FILE} reaches the configured {run.epochs} epochs; counted as complete"
        return f"status unknown, at {progress}; {left_out}"
    return f"{run.status} at {progress}; {left_out}"


def _age_s(summary: dict[str, Any], summary_path: Path, now: float) -> float | None:
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


def format_epoch(epoch: float | None) -> str:
    """1, 2, 3 for whole epochs; 1.50 for evaluations within an epoch (and whole steps)."""
    if epoch is None:
        return ""
    if not math.isfinite(epoch):
        return str(epoch)
    if float(epoch).is_integer():
        return f"{epoch:.0f}" if abs(epoch) < 1e15 else f"{epoch:g}"
    return f"{epoch:.2f}" if abs(epoch) < 1e15 else f"{epoch:g}"


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _summarise_curves(run: Run) -> None:
    """Best loss, best accuracy and the evaluations where loss and accuracy rose together."""
    finite_loss = [row for row in run.rows if finite(row["val_loss"])]
    run.best_row = min(finite_loss, key=lambda row: row["val_loss"]) if finite_loss else None  # type: ignore[arg-type,return-value]
    run.judged_row = run.judged.best(run.rows) if run.judged != LOSS else run.best_row
    with_accuracy = [row for row in run.rows if finite(row.get("val_accuracy"))]
    run.best_accuracy_row = max(with_accuracy, key=lambda row: row["val_accuracy"]) if with_accuracy else None  # type: ignore[arg-type,return-value]
    run.loss_up_accuracy_up = []
    for previous, current in zip(run.rows, run.rows[1:], strict=False):
        losses = previous["val_loss"], current["val_loss"]
        accuracies = previous.get("val_accuracy"), current.get("val_accuracy")
        if not all(finite(v) for v in (*losses, *accuracies)):
            continue
        if losses[1] > losses[0] and accuracies[1] > accuracies[0]:  # type: ignore[operator]
            run.loss_up_accuracy_up.append(current)


def judge(run: Run, judged: Judged) -> bool:
    """Judge ``run`` on ``judged``: its best row by that column. False when its
    metrics.csv has no such column (it did not compute that metric)."""
    run.judged = judged
    run.judged_row = judged.best(run.rows)
    return not run.rows or judged.column in run.rows[0]
