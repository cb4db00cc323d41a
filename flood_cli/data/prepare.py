"""Datasets: a Hub dataset or local csv/tsv/json/jsonl/parquet files -> labelled,
tokenized splits, plus the collate function and batch orders the loop uses.

Tokenization goes through 🤗 Datasets' ``map``, whose cache on disk means a second run
on the same files and tokenizer does not tokenize again. The tokenized splits are then
held as plain lists of token ids: padding a batch from lists is cheaper than any
per-example dataset access in the hot loop.

Importing this module is cheap (torch and datasets are imported where they are used):
`check_files` runs before the slow imports and the model, so that a missing file or
column is said at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from flood_cli.config.schema import DataConfig
from flood_cli.core.errors import FloodError, shown, shown_repr

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
LABELS = "labels"
INDEX = "index"


@dataclass
class TokenizedSplit:
    """One split as token-id lists; ``token_type_ids`` only for text pairs."""

    input_ids: list[list[int]]
    labels: list[int]
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """A hash of what training reads of this split: every example's token ids (and
        token types) and label, in order. It changes with the file's content, the
        tokenizer, the label encoding or label noise, whatever the file's size and time."""
        import numpy as np

        digest = hashlib.blake2b(digest_size=12)
        for column in (self.input_ids, self.token_type_ids or []):
            digest.update(np.fromiter((len(ids) for ids in column), dtype=np.int64, count=len(column)).tobytes())
            digest.update(np.fromiter(chain.from_iterable(column), dtype=np.int64).tobytes())
        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()


@dataclass
class PreparedData:
    train: TokenizedSplit
    validation: TokenizedSplit
    test: TokenizedSplit | None
    label_names: list[str]
    description: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # said to the user, not fatal
    _fingerprints: dict[str, str] | None = field(default=None, repr=False)

    def fingerprints(self) -> dict[str, str]:
        """Each split's fingerprint (computed once: a checkpoint stores them, and a resume
        refuses data that differs)."""
        if self._fingerprints is None:
            splits = (("train", self.train), ("validation", self.validation), ("test", self.test))
            self._fingerprints = {role: split.fingerprint() for role, split in splits if split is not None}
        return self._fingerprints


# ---------------------------------------------------------------------------
# Reading


def _check_file(path: Path, role: str) -> None:
    """What a file's name and metadata tell: it exists, is a regular file of a known
    format and is not empty."""
    if not path.exists():
        raise FloodError(f"{role} file {_shown_path(path)} not found; fix data.{role}_file")
    if path.is_dir():
        raise FloodError(f"{role} file {path} is a folder; data.{role}_file must be a csv/tsv/json/jsonl/parquet file")
    if not path.is_file():
        raise FloodError(
            f"{role} file {_shown_path(path)} is not a regular file ({_file_kind(path)}); "
            f"save the data to a file and point data.{role}_file to it"
        )
    builder = FILE_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise FloodError(
            f"{role} file {path} has an unknown format '{path.suffix}'; use .csv, .tsv, .json, .jsonl or .parquet"
        )
    if path.stat().st_size == 0:
        raise FloodError(f"{role} file {path} is empty; it needs a header and at least one example")


def _read_file(path_str: str, role: str) -> Any:
    from datasets import load_dataset

    path = Path(path_str)
    _check_file(path, role)
    builder = FILE_FORMATS[path.suffix.lower()]
    options: dict[str, Any] = {"sep": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        with _datasets_quiet():
            # Datasets keys its cache of a local file by path and modification time, so a
            # file rewritten with the same size and mtime (cp -p, rsync -t, tar) would be
            # served with its old content. Naming the config after the content's hash keys
            # the cache, and the tokenized cache derived from it, by content.
            split = load_dataset(
                builder, name=f"flood-{content_hash(path)}", data_files={"data": str(path)}, split="data", **options
            )
    except Exception as exc:  # datasets/pandas/pyarrow raise many types for bad files
        raise _read_error(exc, path, role) from None
    split._flood_source = _link_note(path)  # errors about its content then say what was really read
    if builder == "csv" and "__index_level_0__" in split.column_names:
        # pandas takes the first column as an index when the first row has one field
        # more than the header, shifting every column by one: texts would become labels.
        raise FloodError(
            f"{role} file {path}: line 2 has more fields than the header; "
            f"quote texts that contain {_separator_name(path)}s (\"like, this\") or fix the header"
        )
    return split


def _link_note(path: Path) -> str:
    return f" (read from {path}, a link to {path.resolve()})" if path.is_symlink() else ""


def _shown_path(path: Path) -> str:
    """The path as given, and where it really leads when it is a symbolic link (data is
    read through links; errors say what was read)."""
    if path.is_symlink():
        return f"{path} (a link to {path.resolve()})"
    return str(path)


def _file_kind(path: Path) -> str:
    import stat

    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def _columns_shown(columns: list[str], most: int = 8) -> str:
    """A file's header as a message may echo it: a few short, printable names."""
    listed = ", ".join(shown(str(c), 30) for c in columns[:most])
    return listed + (f", … ({len(columns)} in all)" if len(columns) > most else "")


def content_hash(path: Path) -> str:
    """A short hash of a file's bytes (BLAKE2b reads at about 1 GB/s)."""
    digest = hashlib.blake2b(digest_size=12)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _datasets_quiet() -> Iterator[None]:
    """Silence datasets' own error log while loading: it prints a multi-line report of
    failures that the FloodError below already states in one line."""
    import logging

    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _separator_name(path: Path) -> str:
    return "tab" if path.suffix.lower() == ".tsv" else "comma"


def _read_error(exc: Exception, path: Path, role: str) -> FloodError:
    """One line for a file that datasets cannot read, naming the cause and the line where known."""
    shown = _shown_path(path)
    cause = _root_cause(exc)
    text = _first_line(cause)
    if isinstance(cause, UnicodeDecodeError) or "Invalid UTF8" in text or "invalid utf8" in text.lower():
        line = _first_non_utf8_line(path)
        where = f" (line {line})" if line else ""
        return FloodError(
            f"{role} file {shown} is not UTF-8 text{where}; re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
        )
    if "corresponds to no data" in text:
        return FloodError(f"{role} file {shown} has no examples (only a header?); it needs at least one row")
    ragged = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if ragged:
        expected, bad_line, saw = ragged.groups()
        return FloodError(
            f"{role} file {shown}: line {bad_line} has {saw} fields but the header has {expected}; "
            f"quote texts that contain {_separator_name(path)}s (\"like, this\") or fix that line"
        )
    kind = path.suffix.lower().lstrip(".")
    encoding = "" if kind == "parquet" else " text in UTF-8"
    return FloodError(f"cannot read {role} file {shown}: {text.rstrip('.')}; check that it is valid {kind}{encoding}")


def _root_cause(exc: BaseException) -> BaseException:
    """datasets wraps the reader's error (pandas, pyarrow) in DatasetGenerationError."""
    from datasets.exceptions import DatasetGenerationError

    seen = {id(exc)}
    while isinstance(exc, DatasetGenerationError):
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    return exc


def _first_non_utf8_line(path: Path) -> int | None:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _read_hub(cfg: DataConfig, split: str, role: str) -> Any:
    from datasets import load_dataset

    try:
        return load_dataset(cfg.dataset, cfg.subset, split=split)
    except Exception as exc:
        raise FloodError(
            f"cannot load {role} split '{split}' of dataset '{cfg.describe()}' ({_first_line(exc)}); "
            "check data.dataset, data.subset and the split names, or the network"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def read_splits(cfg: DataConfig) -> dict[str, Any]:
    """Raw splits by role: train, validation (maybe None), test (maybe None)."""
    if cfg.train_file is not None:
        return {
            "train": _read_file(cfg.train_file, "train"),
            "validation": _read_file(cfg.validation_file, "validation") if cfg.validation_file else None,
            "test": _read_file(cfg.test_file, "test") if cfg.test_file else None,
        }
    return {
        "train": _read_hub(cfg, cfg.train_split, "train"),
        "validation": _read_hub(cfg, cfg.validation_split, "validation") if cfg.validation_split else None,
        "test": _read_hub(cfg, cfg.test_split, "test") if cfg.test_split else None,
    }


# ---------------------------------------------------------------------------
# Checking and labelling


def _check_columns(split: Any, cfg: DataConfig, role: str) -> None:
    source = getattr(split, "_flood_source", "")
    wanted = _wanted_columns(cfg)
    for column in wanted:
        if column not in split.column_names:
            raise _no_column(role, source, column, split.column_names, cfg)
    if len(split) == 0:
        raise FloodError(f"{role} split is empty; it needs at least one example")
    for column in wanted[:1] + wanted[2:]:
        texts = split[column]
        # Checked before the per-row count: an all-empty column is a wrong column name
        # more often than missing data (pandas reads empty fields as None).
        if all(_is_missing(text) for text in texts):
            raise FloodError(f"{role} data: column '{column}' is empty in every row; point data.{'text_column' if column == cfg.text_column else 'text_pair_column'} to the text")
        missing = [i for i, text in enumerate(texts) if text is None or (isinstance(text, float) and math.isnan(text))]
        if missing:
            raise FloodError(
                f"{role} data: {len(missing)} of {len(texts)} rows have no text in column '{column}' "
                f"(first: data row {missing[0] + 1}); fill or drop them"
            )
    labels = split[cfg.label_column]
    odd = next((i for i, label in enumerate(labels) if label is not None and not isinstance(label, (str, int, float))), None)
    if odd is not None:
        raise FloodError(
            f"{role} data: the label in data row {odd + 1} is a {type(labels[odd]).__name__} ({shown_repr(labels[odd])}), "
            f"not one value; column '{cfg.label_column}' must hold one string or integer label per row"
        )
    missing_labels = [i for i, label in enumerate(labels) if _is_missing(label)]
    if missing_labels:
        raise FloodError(
            f"{role} data: {len(missing_labels)} of {len(split)} rows have no label in column '{cfg.label_column}' "
            f"(first: data row {missing_labels[0] + 1}); fill or drop them"
        )


def _wanted_columns(cfg: DataConfig) -> list[str]:
    return [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])


def _no_column(role: str, source: str, column: str, columns: list[str], cfg: DataConfig) -> FloodError:
    key = {cfg.text_column: "text_column", cfg.label_column: "label_column"}.get(column, "text_pair_column")
    return FloodError(f"{role} data{source} has no column '{shown(str(column))}' (columns: {_columns_shown(columns)}); set data.{key}")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def label_names_of(train: Any, cfg: DataConfig) -> list[str]:
    """Label names in id order: a ClassLabel's names, else the sorted distinct values."""
    feature = train.features[cfg.label_column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    # Numbers sort as numbers (2 before 10), strings by their name as encode_labels
    # reads it (stripped), so that "spam" and " spam " are one class, not two.
    values = sorted(set(train[cfg.label_column]), key=lambda v: (isinstance(v, str), v.strip() if isinstance(v, str) else v))
    return list(dict.fromkeys(_label_str(v) for v in values))


def _label_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def encode_labels(split: Any, cfg: DataConfig, label_names: list[str], role: str) -> list[int]:
    feature = split.features[cfg.label_column]
    if getattr(feature, "names", None):
        ids = list(split[cfg.label_column])
        if any(i < 0 or i >= len(label_names) for i in ids):
            raise FloodError(f"{role} data has labels outside 0..{len(label_names) - 1} (e.g. -1 for unlabelled test sets); drop that split")
        return ids
    index = {name: i for i, name in enumerate(label_names)}
    raw = [_label_str(v) for v in split[cfg.label_column]]
    unknown = sorted(set(raw) - set(index))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise FloodError(
            f"{role} labels {shown} do not occur in the training data (labels: {', '.join(label_names)}); "
            f"fix the {role} file or add examples of them to training"
        )
    return [index[value] for value in raw]


# ---------------------------------------------------------------------------
# Tokenizing


def _tokenize(split: Any, tokenizer: Any, cfg: DataConfig, role: str) -> Any:
    def encode(batch: dict[str, list]) -> dict[str, list]:
        pairs = batch[cfg.text_pair_column] if cfg.text_pair_column else None
        return tokenizer(
            [str(t) for t in batch[cfg.text_column]],
            [str(t) for t in pairs] if pairs is not None else None,
            truncation=True,
            max_length=cfg.max_length,
            return_attention_mask=False,
            return_token_type_ids=cfg.text_pair_column is not None,
        )

    keep = {cfg.label_column}
    return split.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=[c for c in split.column_names if c not in keep],
        desc=f"tokenizing {role}",
    )


def _to_split(tokenized: Any, labels: list[int], pairs: bool) -> TokenizedSplit:
    # Plain Python lists, read from Arrow in one go: `dataset[column]` is a lazy Column
    # whose per-row access made collating a batch of 32 cost ~6 ms.
    if getattr(tokenized, "_indices", None) is not None:  # a selection over a larger table
        tokenized = tokenized.flatten_indices()

    def column(name: str) -> list[list[int]]:
        return tokenized.data.column(name).to_pylist()

    return TokenizedSplit(
        input_ids=column("input_ids"),
        labels=labels,
        token_type_ids=column("token_type_ids") if pairs else None,
    )


def prepare_data(cfg: DataConfig, tokenizer: Any) -> PreparedData:
    """Read, check, split, label-encode and tokenize; every failure is a FloodError."""
    import datasets

    datasets.disable_progress_bars()
    _check_column_names(cfg)
    warnings = []
    if cfg.train_file is not None and Path(cfg.train_file).exists():
        for role, other in (("validation", cfg.validation_file), ("test", cfg.test_file)):
            if other is not None and Path(other).exists() and Path(other).samefile(cfg.train_file):
                warnings.append(
                    f"the {role} file is the training file ({other}): {role} figures will measure memorisation, "
                    "not generalisation"
                )
    raw = read_splits(cfg)
    train = raw["train"]
    _check_columns(train, cfg, "train")
    label_names = label_names_of(train, cfg)
    if len(label_names) < 2:
        raise FloodError(
            f"training data has one class only ({label_names[0]!r} in column '{cfg.label_column}'); a classifier needs at least two"
        )

    validation = raw["validation"]
    if validation is None:
        train, validation = _split_off_validation(train, cfg, label_names)
    else:
        _check_columns(validation, cfg, "validation")
    test = raw["test"]
    if test is not None:
        _check_columns(test, cfg, "test")

    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train = train.shuffle(seed=cfg.split_seed).select(range(cfg.max_train_examples))
    if cfg.max_val_examples is not None and cfg.max_val_examples < len(validation):
        validation = validation.shuffle(seed=cfg.split_seed).select(range(cfg.max_val_examples))
    # Training labels: noise first, on the whole training split, so that AdaFlood's
    # auxiliary runs (a holdout of it) see exactly the main run's noisy labels.
    train_labels = encode_labels(train, cfg, label_names, "train")
    if cfg.label_noise:
        train_labels, _ = flip_labels(train_labels, len(label_names), cfg.label_noise, cfg.label_noise_seed)
    if cfg.holdout is not None:
        held_out = set(fold_members(len(train), cfg.holdout.folds, cfg.holdout.seed)[cfg.holdout.fold])
        kept = [i for i in range(len(train)) if i not in held_out]
        train, train_labels = train.select(kept), [train_labels[i] for i in kept]

    pairs = cfg.text_pair_column is not None
    splits: dict[str, TokenizedSplit | None] = {}
    for role, split in (("train", train), ("validation", validation), ("test", test)):
        if split is None:
            splits[role] = None
            continue
        labels = train_labels if role == "train" else encode_labels(split, cfg, label_names, role)
        splits[role] = _to_split(_tokenize(split, tokenizer, cfg, role), labels, pairs)
    counts = {role: len(s) for role, s in splits.items() if s is not None}
    return PreparedData(
        train=splits["train"],  # type: ignore[arg-type]
        validation=splits["validation"],  # type: ignore[arg-type]
        test=splits["test"],
        label_names=label_names,
        description=cfg.describe(),
        counts=counts,
        warnings=warnings,
    )


def _check_column_names(cfg: DataConfig) -> None:
    for key in ("text_column", "text_pair_column"):
        if getattr(cfg, key) == cfg.label_column:
            raise FloodError(
                f"data.{key} and data.label_column are both '{shown(cfg.label_column)}': the model would read "
                f"the answer; point data.{key} to the text"
            )


# ---------------------------------------------------------------------------
# Checks before the slow part


def check_files(cfg: DataConfig) -> None:
    """What can be said of the data files in a fraction of a second, before torch,
    datasets and the model are loaded (seconds; much longer on a busy machine): each
    file exists, is a regular, readable, non-empty file of a known format, and a CSV,
    TSV or Parquet file has the configured columns (JSON is checked when read). Said
    in the words `prepare_data` would use; what this cannot tell, it leaves to it."""
    _check_column_names(cfg)
    if cfg.train_file is None:
        return  # a Hub dataset
    files = [(role, Path(name)) for role, name in (("train", cfg.train_file), ("validation", cfg.validation_file), ("test", cfg.test_file)) if name]
    for role, path in files:
        _check_file(path, role)
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise FloodError(f"cannot read {role} file {_shown_path(path)}: {exc.strerror or exc}; check the file's permissions") from None
    for role, path in files:
        header = _header(path)
        if header is None:
            continue
        names = _pandas_names(header)
        for column in _wanted_columns(cfg):
            if column not in names and column not in header:
                raise _no_column(role, _link_note(path), column, names, cfg)


# How much of a CSV file is read for its header: a header longer than this is left to
# the full read.
HEADER_CHARACTERS = 1 << 16


def _header(path: Path) -> list[str] | None:
    """The column names of a CSV/TSV (its first non-blank record) or Parquet file; None
    where they cannot be read quickly and surely (the full read then reports)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet

            return [str(name) for name in pyarrow.parquet.read_schema(path).names]
        except Exception:  # not Parquet, damaged: the full read names the problem
            return None
    if suffix not in (".csv", ".tsv"):
        return None
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # pandas drops a BOM too
            head = handle.read(HEADER_CHARACTERS)
    except (OSError, UnicodeError):
        return None
    complete = len(head) < HEADER_CHARACTERS
    reader = csv.reader(io.StringIO(head), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        for record in reader:
            if record and (complete or reader.line_num < head.count("\n")):
                return record
            if record:
                return None  # the header may go on past what was read
    except csv.Error:
        return None
    return None


def _pandas_names(header: list[str]) -> list[str]:
    """Column names as pandas makes them from a header: 'Unnamed: 2' for an empty one,
    'a.1' for the second 'a'."""
    names: list[str] = []
    for index, name in enumerate(header):
        name = name or f"Unnamed: {index}"
        base, count = name, 0
        while name in names:
            count += 1
            name = f"{base}.{count}"
        names.append(name)
    return names


def _split_off_validation(train: Any, cfg: DataConfig, label_names: list[str]) -> tuple[Any, Any]:
    """A stratified, seeded validation split (seeded by data.split_seed, not the training
    seed, so that runs with different seeds are scored on the same examples)."""
    from datasets import ClassLabel

    ids = encode_labels(train, cfg, label_names, "train")
    _check_stratifiable(ids, label_names, cfg)
    column = "__flood_label_id"
    with_ids = train.add_column(column, ids).cast_column(column, ClassLabel(names=label_names))
    try:
        parts = with_ids.train_test_split(test_size=cfg.validation_fraction, seed=cfg.split_seed, stratify_by_column=column)
    except ValueError as exc:
        raise FloodError(
            f"cannot split off a stratified validation set of {cfg.validation_fraction:g} ({_first_line(exc)}); "
            "give data.validation_file or change data.validation_fraction"
        ) from None
    return parts["train"].remove_columns(column), parts["test"].remove_columns(column)


def _check_stratifiable(ids: list[int], label_names: list[str], cfg: DataConfig) -> None:
    """The conditions of a stratified split, said in the config's terms (the splitter's
    own messages name an internal column)."""
    counts = [0] * len(label_names)
    for label_id in ids:
        counts[label_id] += 1
    rare = [name for name, count in zip(label_names, counts, strict=True) if count < 2]
    if rare:
        raise FloodError(
            f"label {rare[0]!r} has only one training example, too few to split off a stratified validation set; "
            "add examples of it, drop it, or give data.validation_file"
        )
    total, classes = len(ids), len(label_names)
    # As datasets sizes the split: the validation part rounds up, training gets the rest.
    n_validation = math.ceil(cfg.validation_fraction * total)
    if n_validation < classes or total - n_validation < classes:
        raise FloodError(
            f"data.validation_fraction {cfg.validation_fraction:g} of {total} examples gives {n_validation} validation "
            f"and {total - n_validation} training examples, fewer than the {classes} labels; "
            "add examples, change data.validation_fraction, or give data.validation_file"
        )


# ---------------------------------------------------------------------------
# Which examples: label noise and held-out folds


def flip_labels(labels: list[int], classes: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Label noise: exactly ``round(fraction × n)`` seeded examples get another label,
    drawn uniformly among the other classes. Returns the labels and the flipped indices."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    count = round(fraction * len(labels))
    chosen = sorted(torch.randperm(len(labels), generator=generator)[:count].tolist())
    noisy = list(labels)
    for index in chosen:
        shift = int(torch.randint(1, classes, (1,), generator=generator))  # never 0: another class
        noisy[index] = (labels[index] + shift) % classes
    return noisy, chosen


def fold_members(size: int, folds: int, seed: int) -> list[list[int]]:
    """The training examples (0..size-1) cut into ``folds`` seeded folds of near-equal size."""
    import torch

    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return [sorted(order[fold::folds]) for fold in range(folds)]
