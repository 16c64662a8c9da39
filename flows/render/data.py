"""Summaries of `loopline ingest` and `loopline features`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from rich.console import RenderableType

from flows.render.parts import NONE, heading, name_of, num, pairs, table, ver


def batch_status(b: dict[str, Any]) -> str:
    if b.get("duplicate_batch"):
        return "duplicate"
    return "accepted" if b.get("accepted", True) else "rejected"


def render_ingest(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    batches = result.get("batches") or [result]
    rejected = sum(not b.get("accepted", True) for b in batches)
    duplicate = all(b.get("duplicate_batch") for b in batches)
    verdict = "already ingested, nothing new" if duplicate else "accepted"
    if rejected:
        verdict = "REJECTED" if len(batches) == 1 else f"{rejected} of {len(batches)} batches REJECTED"
    sources = result.get("source") or (batches[0].get("source") if len(batches) == 1 else None)
    where = f" from {sources}" if sources else f" from {len(batches)} files"
    yield heading(f"ingest {result.get('dataset')}{where}: {verdict}")
    t = table(
        "source",
        "batch",
        "rows in",
        "clean",
        "quarantined",
        "status",
        right=("rows in", "clean", "quarantined"),
        whole=("batch",),
    )
    for b in batches:
        t.add_row(
            name_of(b.get("source")),
            b.get("batch_id") or NONE,
            num(b.get("rows_in")),
            num(b.get("rows_clean")),
            num(b.get("rows_quarantined")),
            batch_status(b),
        )
    if len(batches) > 1:
        t.add_section()
        t.add_row(
            "total",
            f"{len(batches)} batches",
            num(result.get("rows_in")),
            num(result.get("rows_clean")),
            num(result.get("rows_quarantined")),
            "",
        )
    yield t
    yield (
        f"versions: raw {ver(result.get('raw_version'))} · clean {ver(result.get('clean_version'))} · "
        f"quarantine {ver(result.get('quarantine_version'))} · contract {ver(result.get('contract_version'))}"
    )
    docs = [b["data_docs_path"] for b in batches if b.get("data_docs_path")]
    if len(docs) == 1:
        yield f"Data Docs: {docs[0]}"
    elif docs:
        yield f"Data Docs: {os.path.commonpath(docs)} ({len(docs)} validation pages)"


def render_features(result: dict[str, Any], **_: Any) -> Iterable[RenderableType]:
    dataset, version = result.get("dataset"), result.get("features_version")
    nothing_new = not result.get("new_batches") and not result.get("refit")
    state = (
        "up to date, nothing new to build" if nothing_new else f"{num(result.get('rows_added'))} rows added"
    )
    if result.get("cached"):  # the same inputs as the last build: its result, no work done now
        state = "unchanged since the last build, nothing to do (the figures below are that build's)"
    yield heading(f"features/{dataset} {ver(version)}: {state}")
    refit = result.get("refit")
    if refit and result.get("refit_reason"):
        refit = f"yes ({result['refit_reason']})"
    yield pairs(
        [
            ("features", ver(version)),
            ("built from", f"clean/{dataset} {ver(result.get('clean_version'))}"),
            ("new batches", num(result.get("new_batches"))),
            ("rows added", num(result.get("rows_added"))),
            ("transform", result.get("transform_version")),
            ("refit", num(refit) if isinstance(refit, bool) else refit),
        ]
    )
