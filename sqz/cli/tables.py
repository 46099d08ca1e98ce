"""Terminal tables, drawn by rich: one look for every command's table."""

from __future__ import annotations

import sys
from typing import Any, Sequence

__all__ = ["print_table"]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None,
                title: str | None = None) -> None:  # fmt: skip
    """Print ``rows`` under ``headers``. ``align``: one letter per column, l (text) or r
    (numbers); default: the first column l, the others r. Cells are shown as given (no
    markup), so that shapes like [64, 3, 3, 3] stay literal; piped output never wraps."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold", title=title,
                  title_justify="left")  # fmt: skip
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align: one of l/r per column ({len(headers)}), got {align!r}")
    for header, side in zip(headers, align):
        table.add_column(header, justify="left" if side == "l" else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    # Piped (a log file, a test): wide enough that no cell wraps; a terminal: its width.
    width = None if sys.stdout.isatty() else 1000
    Console(file=sys.stdout, width=width, markup=False, highlight=False, emoji=False).print(table)
