"""Small pieces every renderer uses: a console, headings, tables, number formats."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

Renderer = Callable[..., Iterable[RenderableType]]


NONE = "–"


def console(file: Any = None) -> Console:
    """stdout (or `file`); markup and emoji off: names and messages are printed as written."""
    return Console(file=file, markup=False, emoji=False, highlight=False)


def heading(text: str, style: str = "bold") -> Text:
    return Text(text, style=style)


def table(*columns: str, right: Iterable[str] = (), whole: Iterable[str] = ()) -> Table:
    """A plain table: a header rule, no outer frame. Columns named in `right` are right-aligned (numbers:
    never wrapped); those in `whole` hold identifiers (batch ids) never wrapped either, so a copied one is
    right: on a narrow terminal the other columns wrap instead."""
    t = Table(
        box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False, collapse_padding=True
    )
    right, whole = set(right), set(whole)
    for name in columns:
        t.add_column(
            name,
            justify="right" if name in right else "left",
            overflow="fold",
            no_wrap=name in whole or name in right,
        )
    return t


def pairs(rows: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value table; rows whose value is None are left out."""
    t = Table(box=box.SIMPLE, show_header=False, show_edge=False, pad_edge=False)
    t.add_column("key", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    for key, value in rows:
        if value is not None:
            t.add_row(key, str(value))
    return t


def num(x: Any) -> str:
    """Counts with thousands separators, metrics with 4 decimals (tiny p-values in e-notation)."""
    if x is None:
        return NONE
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.2e}"
        return f"{x:,.4f}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


def signed(x: Any) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool) or math.isnan(x):
        return NONE
    return f"{x:+.4f}"


def ver(v: Any) -> str:
    return NONE if v is None or v == "" else f"v{v}"


def name_of(uri: Any) -> str:
    """The file name of a local path or s3:// URI (a folder keeps its own name)."""
    text = str(uri or "")
    return os.path.basename(text.rstrip("/")) or text or NONE
