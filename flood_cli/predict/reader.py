"""An input file read in chunks of at most ``chunk_rows`` rows, whatever its size: CSV
and TSV through pandas' chunked reader (as 🤗 Datasets reads them for training, so the
same values come out), Parquet by record batches, JSON Lines line by line, a JSON array
element by element. Only a JSON file that is one object of columns ({"text": [...]})
is read whole: its rows cannot be had before its end. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flood_cli.core.errors import FloodError
from flood_cli.data.prepare import FILE_FORMATS

Chunk = dict[str, list[Any]]  # column -> values, every column as long
READ_BYTES = 1 << 20


def check_input(path: Path) -> None:
    if not path.exists():
        raise FloodError(f"input file {path} not found; pass --input FILE (csv, tsv, json, jsonl or parquet)")
    if not path.is_file():
        raise FloodError(f"input {path} is not a file; pass --input FILE (csv, tsv, json, jsonl or parquet)")
    if path.suffix.lower() not in FILE_FORMATS:
        raise FloodError(f"input file {path} has an unknown format '{path.suffix}'; use .csv, .tsv, .json, .jsonl or .parquet")
    if path.stat().st_size == 0:
        raise FloodError(f"input file {path} is empty; it needs a header and at least one row")


def read_chunks(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    """The rows of ``path`` as column chunks of 1..chunk_rows rows each."""
    check_input(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            yield from _csv_chunks(path, chunk_rows, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            yield from _parquet_chunks(path, chunk_rows)
        else:
            yield from _rechunk(_json_rows(path), chunk_rows)
    except FloodError:
        raise
    except (ValueError, OSError, ImportError) as exc:  # pandas, pyarrow and json errors
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FloodError(f"cannot read input file {path}: {text}; check that it is valid {suffix.lstrip('.')}") from None


def _csv_chunks(path: Path, chunk_rows: int, separator: str) -> Iterator[Chunk]:
    import pandas

    with pandas.read_csv(path, sep=separator, chunksize=chunk_rows) as reader:
        for frame in reader:
            frame = frame.astype(object).where(frame.notna(), None)
            yield {str(column): frame[column].tolist() for column in frame.columns}


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet

    for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        if batch.num_rows:
            yield batch.to_pydict()


def parquet_rows(path: Path) -> int | None:
    """The row count a Parquet file states in its footer (for the progress bar)."""
    if path.suffix.lower() != ".parquet":
        return None
    try:
        import pyarrow.parquet

        return int(pyarrow.parquet.ParquetFile(path).metadata.num_rows)
    except Exception:  # the read reports what is wrong
        return None


def _rechunk(rows: Iterator[dict[str, Any]], chunk_rows: int) -> Iterator[Chunk]:
    columns: list[str] = []
    chunk: list[dict[str, Any]] = []

    def pack() -> Chunk:
        for row in chunk:
            columns.extend(key for key in row if key not in columns)
        return {column: [row.get(column) for row in chunk] for column in columns}

    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_rows:
            yield pack()
            chunk = []
    if chunk:
        yield pack()


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        start = handle.read(READ_BYTES)
        first = start.lstrip()[:1]
        if first == "[":
            yield from _array_rows(handle, start)
            return
        while "\n" not in start.lstrip():  # the whole first line, to tell JSON Lines
            more = handle.readline()
            if not more:
                break
            start += more
        rest = handle.read() if first == "{" and not _is_json_lines(start) else None
        if rest is not None:  # one object of columns: {"text": [...], "label": [...]}
            yield from _column_rows(json.loads(start + rest), path)
            return
        yield from _line_rows(start, handle, path)


def _is_json_lines(start: str) -> bool:
    """A first line that is a whole object of values: JSON Lines (as a .json file may
    hold). A whole object of lists on one line is an object of columns."""
    line = start.lstrip().split("\n", 1)[0]
    try:
        first = json.loads(line)
    except ValueError:
        return False
    return isinstance(first, dict) and not (first and all(isinstance(value, list) for value in first.values()))


def _line_rows(start: str, handle: Any, path: Path) -> Iterator[dict[str, Any]]:
    def lines() -> Iterator[str]:
        head, _, tail = start.rpartition("\n")
        yield from (head + "\n").splitlines() if head else ()
        pending = tail
        for piece in handle:
            yield pending + piece
            pending = ""
        if pending:
            yield pending

    for number, line in enumerate(lines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FloodError(f"input file {path}: line {number} is not JSON ({exc.msg}); each line must hold one object") from None
        if not isinstance(row, dict):
            raise FloodError(f"input file {path}: line {number} is not a JSON object; each line must hold one object")
        yield row


def _array_rows(handle: Any, text: str) -> Iterator[dict[str, Any]]:
    """The elements of a JSON array, decoded one at a time from a growing buffer."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    ended = False
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position < len(text) and text[position] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, position)
        except ValueError:
            if ended:
                raise ValueError("the JSON array is cut short or holds something that is not JSON") from None
            more = handle.read(READ_BYTES)
            ended = not more
            text = text[position:] + more
            position = 0
            continue
        if not isinstance(row, dict):
            raise ValueError("the JSON array holds something other than objects (one object per row)")
        yield row
        position = end


def _column_rows(data: Any, path: Path) -> Iterator[dict[str, Any]]:
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list) and all(
        isinstance(item, dict) for item in next(iter(data.values()))
    ):
        yield from next(iter(data.values()))  # {"data": [{...}, ...]}
        return
    if not isinstance(data, dict) or not all(isinstance(values, list) for values in data.values()):
        raise FloodError(f"input file {path} is neither JSON Lines, an array of objects nor an object of columns")
    lengths = {len(values) for values in data.values()}
    if len(lengths) > 1:
        raise FloodError(f"input file {path}: its columns have different lengths ({', '.join(map(str, sorted(lengths)))})")
    names = list(data)
    for values in zip(*data.values(), strict=True):
        yield dict(zip(names, values, strict=True))
