"""Readable tables: one cell format for Markdown files and the terminal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|")  # a bare pipe would end the cell


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], print_fn: Callable | None = None
) -> None:
    """A table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, no_wrap=i == 0)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough not to cut task names
        console = Console(width=160)
    (print_fn or console.print)(table)
