"""bench/data_docs: what one batch's GX run costs as the Data Docs site fills up, bounded index vs unbounded.

Each batch's GX Checkpoint runs UpdateDataDocsAction, which rebuilds the site index and reads the stored
result of every run the index lists. COMPLETE results name every failing row, so a batch with bad rows
leaves a result of 0.1-1 MB. This bench runs `--runs` batches, one GX context each as ingest does, on the
same frame (`--rows`, about a third of them failing some check, a 7-column contract that is not the demo)
into one scratch Data Docs site, twice:
- ours: the index lists the newest `validation.data_docs_index_runs` runs (the default, or `--index-runs`);
- peer: GX's default index, which lists every run.
It reports each side's run time for the first and the last few batches, and the growth per stored run
(a least-squares slope). Ratio: peer's last-batches time over ours.

    python -m bench data_docs [--runs 120] [--rows 20000] [--index-runs N] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import RESULTS, machine

CONTRACT = {
    "dataset": "orders",
    "id": "order_id",
    "label": "returned",
    "task": "binary",
    "columns": {
        "order_id": {"type": "int"},
        "items": {"type": "int", "min": 1, "max": 50},
        "amount": {"type": "float", "min": 0},
        "express": {"type": "bool"},
        "coupon": {"type": "string", "regex": "^[A-Z0-9]{6}$", "nullable": True},
        "placed_at": {"type": "timestamp"},
        "returned": {"type": "int", "values": [0, 1]},
    },
}


def frame(rows: int) -> pd.DataFrame:
    """Raw text rows; about a third fail a check (items out of range, a negative amount, a bad coupon)."""
    rng = np.random.default_rng(7)
    items = rng.integers(0, 60, rows)
    amount = np.round(rng.normal(80, 60, rows), 2)
    coupon = np.where(rng.random(rows) < 0.1, "bad", "AB12CD")
    return pd.DataFrame(
        {
            "order_id": np.arange(rows).astype(str),
            "items": items.astype(str),
            "amount": amount.astype(str),
            "express": np.where(rng.random(rows) < 0.5, "true", "false"),
            "coupon": coupon,
            "placed_at": "2026-01-02T03:04:05",
            "returned": rng.integers(0, 2, rows).astype(str),
        },
        dtype="str",
    )


def run_side(runs: int, rows: int, index_runs: int | None) -> dict:
    from loopline.data.contracts import parse_contract
    from loopline.data.validation.gate import coerce_chunk
    from loopline.data.validation.gx import GxValidator, to_gx_frame
    from loopline.data.validation.suite import compile_checks

    contract = parse_contract(CONTRACT)
    typed, _ = coerce_chunk(frame(rows), contract)
    gx_frame = to_gx_frame(typed)
    work = Path(tempfile.mkdtemp(prefix="bench-docs-"))
    seconds = []
    try:
        for i in range(runs):
            validator = GxValidator(contract, compile_checks(contract), str(work / "docs"), index_runs)
            t0 = time.perf_counter()
            validator.run(gx_frame, f"batch-{i:05d}")
            seconds.append(time.perf_counter() - t0)
        result_kb = max(p.stat().st_size for p in (work / "docs" / ".results").rglob("*.json")) / 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tail = max(1, runs // 10)
    slope = float(np.polyfit(np.arange(runs), seconds, 1)[0])
    return {
        "index_runs": index_runs,
        "first_seconds": round(float(np.median(seconds[:tail])), 3),
        "last_seconds": round(float(np.median(seconds[-tail:])), 3),
        "ms_per_stored_run": round(slope * 1000, 2),
        "result_kb": round(result_kb, 1),
        "seconds": [round(s, 3) for s in seconds],
    }


def main(argv: list[str] | None = None) -> dict:
    from loopline.config import ValidationConfig

    p = argparse.ArgumentParser(prog="python -m bench data_docs", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=120)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--index-runs", type=int, default=ValidationConfig().data_docs_index_runs)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    load_before = os.getloadavg()
    ours = run_side(args.runs, args.rows, args.index_runs)
    peer = run_side(args.runs, args.rows, None)
    tail = max(1, args.runs // 10)
    for name, side in (("ours (bounded index)", ours), ("GX default (every run)", peer)):
        print(
            f"{name:24s} first {tail} batches {side['first_seconds']:.3f} s  last {tail} "
            f"{side['last_seconds']:.3f} s  +{side['ms_per_stored_run']:.2f} ms per stored run  "
            f"(results {side['result_kb']:.0f} KB)"
        )
    ratio = peer["last_seconds"] / ours["last_seconds"]
    print(f"last batches: GX default / ours = {ratio:.2f}x  (load {load_before} -> {os.getloadavg()})")
    result = {
        "name": "data_docs",
        "machine": machine(),
        "params": {"runs": args.runs, "rows": args.rows, "index_runs": args.index_runs},
        "ours": ours["last_seconds"],
        "peer": peer["last_seconds"],
        "ratio": ratio,
        "unit": "s per batch's GX run (last tenth of the runs)",
        "peer_name": "GX's default Data Docs index (every stored run listed and read at each batch)",
        "details": {
            "ours": ours,
            "peer": peer,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "data_docs.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
