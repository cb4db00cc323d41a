"""Print `flood compare` tables: aligned text fitted to the terminal, and Markdown.

A Table is what tables.py builds: columns, rows, footnotes, and how to make it narrower
(short headers, columns to leave out, cells to cut). Control characters in cells are
escaped here, so nothing in a run's name reaches the terminal as a control sequence.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from flood_cli.core.errors import escaped

COLUMN_GAP = "  "
# Footnotes are prose: wrapped to this width in the terminal (Markdown reflows by itself).
FOOTNOTE_WIDTH = 100
# A cell cut to fit the terminal keeps at least this many characters.
MIN_CUT_WIDTH = 8
# In a table's drop_order: cut the elastic columns to their own widths here.
CUT = "<cut elastic columns>"
# Marks a run whose best validation loss is its last evaluation (still improving).
IMPROVING = "†"
# Marks a run that early stopping ended (train.early_stopping).
STOPPED_EARLY = "‡"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    right_aligned: frozenset[str] = frozenset()
    footnotes: list[str] = field(default_factory=list)
    # What a column means, printed under the table as "<column>: <text>" while the column
    # is shown (under its short name when the terminal is narrow).
    legend: list[tuple[str, str]] = field(default_factory=list)
    # Fitting a narrow terminal: shorter headers, then columns left out in drop_order, in
    # which CUT marks where the elastic columns are cut (in the middle, with "…") down to
    # the width given here; if that is not enough, they are cut further at the end.
    short: dict[str, str] = field(default_factory=dict)
    drop_order: tuple[str, ...] = ()
    elastic: dict[str, int] = field(default_factory=dict)


def _escaped_table(table: Table) -> Table:
    """The table with control characters in its cells escaped (a run folder named with a
    line break, a setting holding one): each row stays one line, and nothing in a name
    reaches the terminal as a control sequence. JSON and CSV carry the text as it is."""
    return replace(
        table,
        rows=[[escaped(cell) for cell in row] for row in table.rows],
        footnotes=[escaped(footnote) for footnote in table.footnotes],
    )


def terminal_width() -> int | None:
    """The width the text tables must fit: ``COLUMNS`` when set to a number, else the
    terminal's when stdout is one; None (no limit) in a pipe or a file."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if sys.stdout is not None and sys.stdout.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def _table_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    widths = [max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)]
    return 1 + sum(widths) + len(COLUMN_GAP) * (len(widths) - 1)


def _cut(cell: str, width: int) -> str:
    """A cell cut to ``width`` characters in the middle: both ends of a run name stay."""
    if len(cell) <= width:
        return cell
    head = (width - 1) * 3 // 5
    return cell[:head] + "…" + cell[len(cell) - (width - 1 - head):]


def fit_table(table: Table, width: int | None) -> Table:
    """The table made to fit ``width`` characters: short headers, then the least useful
    columns left out (a footnote names them) and the elastic cells cut with "…", in the
    table's drop_order; last, the elastic cells cut further. A table that fits, or
    ``width`` None, is returned as it is."""
    if width is None or _table_width(table.columns, table.rows) <= width:
        return table
    keys = list(table.columns)  # the full names, which drop_order, elastic and legend use
    columns = [table.short.get(name, name) for name in keys]
    rows = [list(row) for row in table.rows]
    left_out = []

    def cut_elastic(floor: int | None) -> None:
        """Cut the widest elastic column by one character at a time until the table
        fits or every elastic column is at its floor (its own width, or ``floor``)."""
        excess = _table_width(columns, rows) - width
        widths = {i: max([len(columns[i]), *(len(row[i]) for row in rows)]) for i, key in enumerate(keys) if key in table.elastic}
        floors = {i: max(len(columns[i]), MIN_CUT_WIDTH, table.elastic[keys[i]] if floor is None else floor) for i in widths}
        while excess > 0:
            shrinkable = [i for i in widths if widths[i] > floors[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        for row in rows:
            for i, cell_width in widths.items():
                row[i] = _cut(row[i], cell_width)

    for name in table.drop_order:
        if _table_width(columns, rows) <= width:
            break
        if name == CUT:
            cut_elastic(None)
        elif name in keys:
            index = keys.index(name)
            for listed in (keys, columns, *rows):
                listed.pop(index)
            left_out.append(name)
    if _table_width(columns, rows) > width:
        cut_elastic(MIN_CUT_WIDTH)
    footnotes = list(table.footnotes)
    if left_out:
        footnotes.append(f"Left out to fit {width} columns: {', '.join(left_out)}; --wide shows every column.")
    return replace(
        table,
        columns=columns,
        rows=rows,
        right_aligned=frozenset(table.short.get(name, name) for name in table.right_aligned) | table.right_aligned,
        footnotes=footnotes,
        legend=[(table.short.get(name, name), _short_names(text, table.short, keys)) for name, text in table.legend if name in keys],
        elastic={},
        short={},
        drop_order=(),
    )


def _short_names(text: str, short: dict[str, str], shown: Sequence[str]) -> str:
    """A legend's text naming the columns as the fitted table heads them."""
    for name in sorted((n for n in short if n in shown), key=len, reverse=True):
        text = text.replace(name, short[name])
    return text


def _legend_lines(table: Table) -> list[str]:
    """ "<column>: <what it is>" for each explained column the table shows."""
    return [f"{name}: {text}" for name, text in table.legend if name in table.columns]


def render_terminal(tables: Sequence[Table], width: int | None = None) -> str:
    """Plain aligned columns, one line per row, footnotes below; within ``width``
    characters when given (see `fit_table`).

    Deliberately not rich: rich measures and wraps every cell, about a second for a
    thousand runs, and folded cells make a table harder to read than a long line.
    """
    prose_width = FOOTNOTE_WIDTH if width is None else max(20, min(FOOTNOTE_WIDTH, width))
    blocks = []
    for table in (fit_table(_escaped_table(t), width) for t in tables):
        widths = [max([len(column), *(len(row[i]) for row in table.rows)]) for i, column in enumerate(table.columns)]
        right = [column in table.right_aligned for column in table.columns]

        def line(cells: Sequence[str]) -> str:
            padded = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right, strict=True))  # noqa: B023 (called within this iteration only)
            return " " + COLUMN_GAP.join(padded).rstrip()

        rule = " " + "─" * (sum(widths) + len(COLUMN_GAP) * (len(widths) - 1))
        title = [table.title] if width is None else textwrap.wrap(table.title, prose_width, break_on_hyphens=False)
        lines = [*title, "", line(table.columns), rule, *(line(row) for row in table.rows)]
        prose = _legend_lines(table) + table.footnotes
        if prose:
            lines.append("")
            for footnote in prose:
                indent = " " * (footnote.index(" ") + 1) if footnote.startswith(("[", "*", IMPROVING, STOPPED_EARLY)) else "  "
                lines += textwrap.wrap(footnote, prose_width, subsequent_indent=indent, break_on_hyphens=False)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_markdown(tables: Sequence[Table]) -> str:
    blocks = []
    for table in map(_escaped_table, tables):
        lines = [f"**{table.title}**", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join("---:" if c in table.right_aligned else "---" for c in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        for footnote in _legend_lines(table) + table.footnotes:
            # A leading "*" would start a bullet list and vanish; "[1]" stays literal.
            lines += ["", "\\" + footnote if footnote.startswith("*") else footnote]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
