"""`flood predict RUN_DIR --input FILE`: the run's best model (or, with --last, the
weights of its latest checkpoint) applied to every row of a file, streamed in chunks.

What is read: the run's config.yaml (text column(s), label column, max_length), the
model and tokenizer of best_model/ (or the checkpoint's weights in the run's model).
What is written: one CSV row per input row (id, prediction, prob_<label> per class),
to a temporary file renamed into place at the end, so that a failure leaves nothing;
where the input has the label column, also loss, accuracy and the metrics of
flood_cli.train.metrics, printed and written to <output stem>.metrics.json.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flood_cli.config.schema import Config, DataConfig
from flood_cli.core.errors import FloodError, shown
from flood_cli.core.metrics import METRIC_NAMES
from flood_cli.data.prepare import _is_missing, _label_str
from flood_cli.predict.reader import check_input, parquet_rows, read_chunks
from flood_cli.runs.folder import BEST_MODEL_DIR, CONFIG_FILE, make_temp_file, read_run_file

CHECKPOINT = Path("checkpoints") / "last.pt"  # train/checkpoint.py: CHECKPOINT_DIR / LAST
ID_COLUMN = "id"
CHUNK_BATCHES = 16  # a chunk read from the file holds this many batches


@dataclass
class Trained:
    """What a prediction needs of a run."""

    model: Any
    tokenizer: Any
    label_names: list[str]
    data: DataConfig
    source: str  # best_model/ or the checkpoint, for the messages


@dataclass
class Outcome:
    output: Path
    rows: int
    metrics_file: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def default_output(input_path: Path) -> Path:
    """<input folder>/<input stem>.predictions.csv"""
    return input_path.with_name(f"{input_path.stem}.predictions.csv")


def metrics_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.metrics.json")


def check_request(run_dir: Path, input_path: Path, output: Path | None, last: bool, batch_size: int) -> Path:
    """Every mistake that can be said before torch is loaded; returns the output path.

    The output rule: without --output, <input stem>.predictions.csv beside the input,
    refused when it exists already (flood never overwrites silently); --output FILE
    names the file to write, replacing it if it exists."""
    if batch_size < 1:
        raise FloodError(f"--batch-size {batch_size}: give at least 1")
    if not (run_dir / CONFIG_FILE).is_file():
        raise FloodError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder that flood train printed")
    if last:
        if not (run_dir / CHECKPOINT).is_file():
            raise FloodError(
                f"run {run_dir} has no checkpoint ({CHECKPOINT}): a completed run keeps it only with "
                "output.keep_checkpoint: true; drop --last to apply its best model"
            )
    elif not (run_dir / BEST_MODEL_DIR / "config.json").is_file():
        raise FloodError(
            f"run {run_dir} has no saved model ({BEST_MODEL_DIR}/); train with output.save_best_model: true "
            "(the default), or pass --last to apply its latest checkpoint (kept with output.keep_checkpoint: true)"
        )
    check_input(input_path)
    if output is None:
        output = default_output(input_path)
        if output.exists():
            raise FloodError(f"{output} exists already; pass --output {output} to replace it, or another --output FILE")
    if output.suffix.lower() != ".csv":
        raise FloodError(f"--output {output}: predictions are written as CSV; give a file name ending in .csv")
    if output.exists() and output.resolve() == input_path.resolve():
        raise FloodError(f"--output {output} is the input file; give another file name")
    if output.is_dir():
        raise FloodError(f"--output {output} is a folder; give a file name ending in .csv")
    if not output.parent.is_dir():
        raise FloodError(f"the folder of --output {output} does not exist; create it or give another --output")
    return output


def run_config(run_dir: Path) -> Config:
    from flood_cli.config.load import load_config

    return load_config(run_dir / CONFIG_FILE, new_run=False, read_run_file=read_run_file)


def load_trained(run_dir: Path, last: bool) -> Trained:
    """The run's model in evaluation mode, its tokenizer, label names and data settings."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flood_cli.model import TOKENIZER_FILES, build_model, load_tokenizer, quiet_transformers

    quiet_transformers()
    cfg = run_config(run_dir)
    best = run_dir / BEST_MODEL_DIR
    has_best = (best / "config.json").is_file()
    if not last:
        model = AutoModelForSequenceClassification.from_pretrained(best)
        tokenizer = AutoTokenizer.from_pretrained(best)
        names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        return Trained(model.eval(), tokenizer, names, cfg.data, f"{best}")
    from flood_cli.train import checkpoint

    state = checkpoint.load(run_dir / CHECKPOINT)
    tokenizer = (
        AutoTokenizer.from_pretrained(best) if any((best / name).is_file() for name in TOKENIZER_FILES) else load_tokenizer(cfg.model)
    )
    if has_best:  # the same run's labels, without reading its training data again
        from transformers import AutoConfig

        saved = AutoConfig.from_pretrained(best)
        names = [str(saved.id2label[i]) for i in range(saved.num_labels)]
    else:
        names = _label_names(run_dir, cfg)
    model = build_model(cfg.model, names, tokenizer, cfg.data.max_length)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise FloodError(f"the checkpoint of run {run_dir} does not fit its model ({shown(' '.join(str(exc).split()), 120)})") from None
    return Trained(model.eval(), tokenizer, names, cfg.data, f"{run_dir / CHECKPOINT}")


def _label_names(run_dir: Path, cfg: Config) -> list[str]:
    """The training labels as the run saw them (no best_model/ to ask): from its training data."""
    from flood_cli.data.prepare import label_names_of, read_splits

    try:
        return label_names_of(read_splits(cfg.data)["train"], cfg.data)
    except FloodError as exc:
        raise FloodError(f"run {run_dir} has no best_model/ that names its labels, and its training data cannot be read: {exc}") from None


def predict_file(
    run_dir: Path,
    input_path: Path,
    output: Path | None = None,
    last: bool = False,
    batch_size: int = 64,
    progress: Callable[[int, int | None], None] | None = None,
) -> Outcome:
    """Predict every row of ``input_path``; ``progress(rows_done, total_or_None)`` after each chunk."""
    output = check_request(run_dir, input_path, output, last, batch_size)
    trained = load_trained(run_dir, last)
    total = parquet_rows(input_path)
    with _staged(output) as handle:
        predictor = _Predictor(trained, input_path, batch_size)
        writer = csv.writer(handle)
        writer.writerow([ID_COLUMN, "prediction", *(f"prob_{name}" for name in trained.label_names)])
        for rows in predictor.run():
            writer.writerows(rows)
            if progress is not None:
                progress(predictor.rows, total)
        if predictor.rows == 0:
            raise FloodError(f"input file {input_path} has no rows; it needs at least one")
        metrics = predictor.metrics()
        metrics_file = None
        if metrics:
            metrics_file = metrics_path(output)
            _write_json(metrics_file, {"input": str(input_path), "model": trained.source, "rows": predictor.rows, **metrics})
    return Outcome(output, predictor.rows, metrics_file, metrics)


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Any]:
    """A temporary file beside ``path``, renamed to it when the block ends well, removed otherwise."""
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    clean = {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in payload.items()}
    with _staged(path) as handle:
        handle.write(json.dumps(clean, indent=2) + "\n")


class _Predictor:
    def __init__(self, trained: Trained, input_path: Path, batch_size: int):
        import torch

        self.torch = torch
        self.trained = trained
        self.input_path = input_path
        self.batch_size = batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = trained.model.to(self.device)
        self.index = {name: i for i, name in enumerate(trained.label_names)}
        self.rows = 0
        self.labelled: bool | None = None
        self.probs: list[Any] = []  # labelled inputs: every row's probabilities (classes floats a row)
        self.labels: list[int] = []
        self.loss_sum = 0.0

    def run(self) -> Iterator[list[list[Any]]]:
        data = self.trained.data
        for chunk in read_chunks(self.input_path, self.batch_size * CHUNK_BATCHES):
            self._check_columns(chunk)
            count = len(next(iter(chunk.values())))
            texts = self._texts(chunk, data.text_column, count)
            pairs = self._texts(chunk, data.text_pair_column, count) if data.text_pair_column else None
            ids = chunk.get(ID_COLUMN) or list(range(self.rows + 1, self.rows + count + 1))
            labels = self._labels(chunk[data.label_column]) if self.labelled else None
            out: list[list[Any]] = []
            for start in range(0, count, self.batch_size):
                stop = start + self.batch_size
                logits = self._logits(texts[start:stop], pairs[start:stop] if pairs else None)
                probs = self.torch.softmax(logits, dim=-1)
                if labels is not None:
                    batch_labels = labels[start:stop]
                    target = self.torch.tensor(batch_labels)
                    self.loss_sum += float(self.torch.nn.functional.cross_entropy(logits.double(), target, reduction="sum"))
                    self.probs.append(probs.numpy())
                    self.labels.extend(batch_labels)
                for row_id, row in zip(ids[start:stop], probs.tolist(), strict=True):
                    best = max(range(len(row)), key=row.__getitem__)
                    out.append([row_id, self.trained.label_names[best], *(f"{p:.8g}" for p in row)])
            self.rows += count
            yield out

    def _check_columns(self, chunk: dict[str, list[Any]]) -> None:
        data = self.trained.data
        for column, key in ((data.text_column, "text_column"), (data.text_pair_column, "text_pair_column")):
            if column is not None and column not in chunk:
                columns = ", ".join(shown(str(c), 30) for c in list(chunk)[:8])
                raise FloodError(
                    f"input file {self.input_path} has no column '{shown(column)}' (columns: {columns}); "
                    f"the run was trained on it (data.{key}): rename the input's text column"
                )
        if self.labelled is None:
            self.labelled = data.label_column in chunk

    def _texts(self, chunk: dict[str, list[Any]], column: str, count: int) -> list[str]:
        values = chunk[column]
        for i, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise FloodError(
                    f"input file {self.input_path}: data row {self.rows + i + 1} has no text in column '{shown(column)}'; fill or drop it"
                )
        return [str(value) for value in values]

    def _labels(self, values: list[Any]) -> list[int]:
        column = self.trained.data.label_column
        ids = []
        for i, value in enumerate(values):
            if _is_missing(value):
                raise FloodError(
                    f"input file {self.input_path}: data row {self.rows + i + 1} has no label in column '{shown(column)}'; "
                    "fill it, or drop the column to predict without scoring"
                )
            name = _label_str(value)
            if name not in self.index:
                raise FloodError(
                    f"input file {self.input_path}: label {shown(name)!r} (data row {self.rows + i + 1}) is not one the model knows "
                    f"({', '.join(self.trained.label_names)}); fix the label or drop the column '{shown(column)}'"
                )
            ids.append(self.index[name])
        return ids

    def _logits(self, texts: list[str], pairs: list[str] | None) -> Any:
        torch = self.torch
        encoded = self.trained.tokenizer(
            texts, pairs, truncation=True, max_length=self.trained.data.max_length, padding=True, return_tensors="pt"
        )
        with torch.inference_mode():
            logits = self.model(**{key: value.to(self.device) for key, value in encoded.items()}).logits
        return logits.float().cpu()

    def metrics(self) -> dict[str, float]:
        """Loss, accuracy and every metric of the registry; empty for an unlabelled input."""
        if not self.labelled:
            return {}
        import numpy as np

        from flood_cli.train.metrics import compute

        probs = np.concatenate(self.probs)
        labels = np.asarray(self.labels)
        figures = {"loss": self.loss_sum / len(labels), "accuracy": float((probs.argmax(axis=1) == labels).mean())}
        return {**figures, **compute(METRIC_NAMES, probs, labels)}


def metrics_line(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def bar() -> Any:
    """A rows-done bar on stderr (a terminal only; None otherwise)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("predicting"), BarColumn(), TextColumn("{task.completed} rows"), TimeElapsedColumn(), console=Console(file=sys.stderr))
