"""The `maintenance` summary: one row per Delta table it looked at."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from flows.render.parts import heading, num, table, ver


def render_maintenance(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    dry = " (dry run: nothing changed)" if result.get("dry_run") else ""
    yield heading(f"lake maintenance of {result.get('lake')}{dry}")
    right = ("files", "rows expired", "vacuumed")
    t = table("table", "version", "files", "rows expired", "vacuumed", "note", right=right)
    rows = result.get("tables") or []
    for r in rows:
        notes = ["compacted"] if r.get("compacted") else []
        notes += ["not vacuumed (pinned)"] if r.get("vacuum_skipped") else []
        notes += [f"FAILED: {r['error']}"] if r.get("error") else []
        t.add_row(
            r.get("table", "?"),
            f"{ver(r.get('version_before'))} -> {ver(r.get('version_after'))}",
            f"{num(r.get('files_before'))} -> {num(r.get('files_after'))}",
            num(r.get("rows_deleted")),
            f"{num(r.get('files_vacuumed'))} ({_bytes(r.get('bytes_vacuumed'))})",
            ", ".join(notes),
        )
    yield t if rows else "no Delta tables in the lake yet"
    cutoff = result.get("expired_before")
    yield Text(
        f"predictions expired: scored before {cutoff or 'never (no retention)'}; vacuum keeps files "
        f"{result.get('file_retention_hours')} h after their last use; pinned: clean/features keep every "
        "version a model recorded (lake.vacuum_pinned_tables)",
        style="dim",
    )
    if result.get("failed"):
        yield Text(f"failed (left as they were; run again): {', '.join(result['failed'])}", style="red")


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"
