"""The one table printer: aligned text tables, Markdown tables, and rows streamed as a table, JSON lines or CSV.

Every table the package prints goes through here (``mambaout list``, ``bench``, ``analyze``, ``compare``, the
parity report of ``export``), so they share one layout: columns left-aligned and two spaces apart, a rule of
dashes under the header, no trailing spaces, ``-`` for a missing value.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

# (title, key of the row dict, formatter of a present value)
Column = tuple[str, str, Callable[[Any], str]]


def cell(value: Any, fmt: Callable[[Any], str] = str, missing: str = "-") -> str:
    return missing if value is None else fmt(value)


def text_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None, *, indent: str = "",
               sep: str = "  ", min_widths: Sequence[int] = ()) -> list[str]:
    """The lines of an aligned table: ``header`` (if any) and a rule of dashes under it, then ``rows``.

    Each column is as wide as its widest cell (at least ``min_widths[i]``); cells are joined by ``sep`` and
    every line starts with ``indent`` and has no trailing spaces.
    """
    table = ([list(header)] if header is not None else []) + [list(r) for r in rows]
    if not table:
        return []
    ncols = len(table[0])
    widths = [max([len(r[i]) for r in table] + list(min_widths[i:i + 1])) for i in range(ncols)]
    lines = [indent + sep.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    if header is not None:
        lines.insert(1, indent + sep.join("-" * w for w in widths))
    return lines


def dict_table(rows: Sequence[dict], columns: Sequence[Column], **options: Any) -> list[str]:
    """:func:`text_table` of dict rows: one column per ``(title, key, formatter)``, None shown as ``-``."""
    body = [[cell(r[key], fmt) for _, key, fmt in columns] for r in rows]
    return text_table(body, [title for title, _, _ in columns], **options)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table; ``align`` holds one letter per column, ``l`` (the default) or ``r``."""
    rule = ["---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class RowWriter:
    """Rows printed as they come (``json``: one object a line; ``csv``: a header, then a line each) or as one
    table once all are in (``table``: ``table(rows)`` gives its lines), so a long run shows progress and a crash
    keeps what was printed."""

    def __init__(self, fmt: str, table: Callable[[list[dict]], list[str]],
                 fieldnames: Sequence[str] | None = None, stream: TextIO | None = None):
        self.fmt, self.table, self.fieldnames = fmt, table, fieldnames
        self.stream = stream
        self.rows: list[dict] = []
        self._csv = None

    def _out(self) -> TextIO:
        return self.stream or sys.stdout  # looked up late: a redirected or captured stdout counts

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.fmt == "json":
            print(json.dumps(row), file=self._out(), flush=True)
        elif self.fmt == "csv":
            if self._csv is None:
                import csv

                self._csv = csv.DictWriter(self._out(), fieldnames=list(self.fieldnames or row))
                self._csv.writeheader()
            self._csv.writerow(row)
            self._out().flush()

    def close(self) -> None:
        if self.fmt == "table":
            for line in self.table(self.rows):
                print(line, file=self._out())


__all__ = ["Column", "RowWriter", "cell", "dict_table", "markdown_table", "text_table"]
