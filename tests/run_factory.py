"""Hand-made run folders, as `flood train` writes them, for tests and benchmarks.

No training needed: ``write_run`` writes config.yaml, metrics.csv and summary.json
from a few numbers, and each file can be left out or spoilt to test bad input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flood_cli.runs.columns import METRICS_COLUMNS
from flood_cli.runs.folder import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

DEFAULT_VAL_LOSSES = (0.62, 0.55, 0.58)
DEFAULT_VAL_ACCURACIES = (0.80, 0.84, 0.86)
STEPS_PER_EPOCH = 100


def make_config(
    mode: str = "baseline",
    b: float | None = None,
    lr: float = 2e-5,
    ascent_lr: float | None = None,
    seed: int = 42,
    epochs: int = 3,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """A resolved config as `flood train` saves it (the shape of Config.experiment_dict)."""
    return {
        "model": model or {
            "name_or_path": None,
            "tiny": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128, "dropout": 0.1},
            "tokenizer": None,
        },
        "data": data or {
            "dataset": None, "subset": None, "train_file": "/data/spam.csv", "validation_file": None,
            "test_file": None, "train_split": "train", "validation_split": "validation", "test_split": None,
            "validation_fraction": 0.1, "split_seed": 42, "text_column": "text", "text_pair_column": None,
            "label_column": "label", "max_length": 128, "max_train_examples": None, "max_val_examples": None,
        },
        "train": {
            "mode": mode, "b": b, "lr": lr, "ascent_lr": ascent_lr, "epochs": epochs, "batch_size": 32,
            "eval_batch_size": 128, "weight_decay": 0.01, "warmup_ratio": 0.0, "schedule": "linear",
            "max_grad_norm": 1.0, "grad_accum_steps": 1, "seed": seed, "eval_every": "epoch",
            **(train or {}),
        },
        "runtime": {"device": "auto", "precision": precision, "num_workers": 0},
        "output": {"dir": "runs", "name": None, "save_best_model": False},
        "meta": {"versions": {"flood-cli": "0.1.0"}, "started_at": "2025-01-01T00:00:00+00:00"},
    }


def make_rows(
    val_losses: Sequence[float],
    val_accuracies: Sequence[float] | None = None,
    train_losses: Sequence[float] | None = None,
    evaluations_per_epoch: int = 1,
) -> list[dict[str, Any]]:
    """metrics.csv rows with the given validation curve; other columns plausible."""
    val_accuracies = val_accuracies or [0.8 + 0.01 * i for i in range(len(val_losses))]
    train_losses = train_losses or [0.7 * 0.7**i for i in range(len(val_losses))]
    rows = []
    best = float("inf")
    for i, (val_loss, val_accuracy, train_loss) in enumerate(zip(val_losses, val_accuracies, train_losses, strict=True)):
        best = min(best, val_loss)
        step = (i + 1) * STEPS_PER_EPOCH // evaluations_per_epoch
        rows.append({
            "epoch": round((i + 1) / evaluations_per_epoch, 6), "step": step, "train_loss": train_loss,
            "train_objective": train_loss, "train_accuracy": 1 - train_loss / 2, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "best_val_loss": best, "lr": 2e-5, "flood_active": 0.0,
            "val_loss_top10_share": 0.3 + 0.02 * i, "elapsed_s": 10.0 * (i + 1),
        })
    return rows


def metrics_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = METRICS_COLUMNS) -> str:
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else f"{row[c]:.8g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return "\r\n".join(lines) + "\r\n"  # csv.DictWriter's line ending, as flood train writes it


def make_summary(name: str, config: dict[str, Any], rows: Sequence[dict[str, Any]], status: str = "completed", **fields: Any) -> dict[str, Any]:
    train = config["train"]
    best = min(rows, key=lambda r: r["val_loss"]) if rows else None
    summary = {
        "status": status, "error": None, "name": name, "mode": train["mode"], "b": train["b"], "lr": train["lr"],
        "ascent_lr": train["ascent_lr"], "seed": train["seed"], "epochs": train["epochs"],
        "best_val_loss": best["val_loss"] if best else None, "best_epoch": best["epoch"] if best else None,
        "best_step": best["step"] if best else None, "best_val_accuracy": best["val_accuracy"] if best else None,
        "final_val_loss": rows[-1]["val_loss"] if rows else None,
        "final_val_accuracy": rows[-1]["val_accuracy"] if rows else None,
        "num_train_examples": 900, "num_val_examples": 100, "num_test_examples": 0, "num_labels": 2,
        "model": "tiny-bert(L2,H64,A2)", "data": "spam.csv", "steps_completed": rows[-1]["step"] if rows else 0,
        "total_steps": train["epochs"] * STEPS_PER_EPOCH, "started_at": "2025-01-01T00:00:00+00:00",
        "updated_at": "2025-01-01T00:10:00+00:00", "wall_time_s": 600.0,
    }
    summary.update(fields)
    return summary


def write_run(
    root: Path,
    name: str,
    *,
    val_losses: Sequence[float] = DEFAULT_VAL_LOSSES,
    val_accuracies: Sequence[float] | None = None,
    train_losses: Sequence[float] | None = None,
    evaluations_per_epoch: int = 1,
    status: str = "completed",
    summary_fields: dict[str, Any] | None = None,
    with_config: bool = True,
    with_metrics: bool = True,
    with_summary: bool = True,
    extra_columns: dict[str, Sequence[float | None]] | None = None,
    **config_fields: Any,
) -> Path:
    """Write one run folder ``root/name``; ``config_fields`` go to make_config;
    ``extra_columns`` (e.g. val_f1_macro: a value per row) are appended to metrics.csv."""
    path = root / name
    path.mkdir(parents=True)
    config = make_config(**config_fields)
    rows = make_rows(val_losses, val_accuracies, train_losses, evaluations_per_epoch)
    for column, values in (extra_columns or {}).items():
        for row, value in zip(rows, values, strict=True):
            row[column] = value
    if with_config:
        (path / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if with_metrics:
        columns = (*METRICS_COLUMNS, *(extra_columns or {}))
        (path / METRICS_FILE).write_text(metrics_csv(rows, columns), encoding="utf-8", newline="")
    if with_summary:
        summary = make_summary(name, config, rows, status=status, **(summary_fields or {}))
        (path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path
