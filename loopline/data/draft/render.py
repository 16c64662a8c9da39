"""The draft as commented YAML, written for a person to read and edit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopline.data.draft.columns import (
    _LINE_BREAK,
    CATEGORY_MAX_VALUES,
    CATEGORY_MIN_ROWS_PER_VALUE,
    MARGIN,
    ColumnDraft,
    _Profile,
    _scalar,
)


def _header(sample: str, rows: int, id_col: str, id_reason: str, task: str, task_reason: str) -> list[str]:
    return [
        f"Drafted by `loopline init` from {_scalar(Path(sample).name)} ({rows} rows): a starting point to read "
        "and edit.",
        "Inferred with the validation gate's own parsers; this draft ingests its sample with no quarantined row.",
        f"  id: {_scalar(id_col)}, {id_reason}",
        f"  task: {task}, as {task_reason}",
        "  type: int, bool, float or timestamp where every value parses as that type (int: spelled as one),",
        f"    else string; a string column with <= {CATEGORY_MAX_VALUES} distinct values, each seen >= "
        f"{CATEGORY_MIN_ROWS_PER_VALUE}x on average, is a category",
        "  nullable: where the sample holds a null or empty value",
        f"  min/max: the observed range widened by {MARGIN:.0%} of its width on each side (ints rounded outward,",
        "    floats to 3 significant digits of the width), never across 0 when every value is >= 0 (or <= 0)",
        "The comment after each column says what the sample held.",
    ]


def _render(data: dict[str, Any], columns: list[ColumnDraft], header: list[str]) -> str:
    lines = [f"# {_comment(h)}" for h in header]
    lines += [f"{k}: {_scalar(data[k])}" for k in ("dataset", "id", "label", "task")]
    lines.append("columns:")
    keys = [f"{_scalar(c.name)}:" for c in columns]
    specs = [_flow(c.spec) for c in columns]
    key_width = min(max(map(len, keys)), 32)
    spec_width = min(max(map(len, specs)), 60)
    for key, spec, col in zip(keys, specs, columns, strict=True):
        lines.append(f"  {key:<{key_width}} {spec:<{spec_width}}  # {_comment(col.comment)}".rstrip())
    lines.append(
        f"quarantine_max_fraction: {_scalar(data['quarantine_max_fraction'])}"
        "   # more bad rows than this in a batch: the batch fails the gate"
    )
    return "\n".join(lines) + "\n"


def _flow(spec: dict[str, Any]) -> str:
    parts = []
    for key, value in spec.items():
        shown = (
            "[" + ", ".join(_scalar(v) for v in value) + "]" if isinstance(value, list) else _scalar(value)
        )
        parts.append(f"{key}: {shown}")
    return "{" + ", ".join(parts) + "}"


def _comment(text: str) -> str:
    """Comments hold only rendered scalars and our words; line breaks would end them."""
    return _LINE_BREAK.sub(" ", text)


def _names(profiles: dict[str, _Profile]) -> str:
    return _short(list(profiles))


def _short(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
