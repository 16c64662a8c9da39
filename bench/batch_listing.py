"""bench/batch_listing: how the features build learns clean/D's batches, from the Delta log or from the rows.

Each features build lists the batches in clean/D to find the new ones. Ours reads them from the snapshot's
add actions (`delta.distinct_from_log`: each file's min/max of `_batch_id`, kept in the log since tables are
created with the batch metadata among their statistics columns); the peer is what the build did before: the
`_batch_id` column read from every data file (`features.table._distinct`, a record batch at a time). The
table: `--columns` float columns (38, the demo's width: `_batch_id` past Delta's 32 indexed columns), then
`_batch_id`, `--batches` appends of rows/batches rows each, written the way clean/D is. Local disk; on S3 the
column read costs a request or more per file as well.

    python -m bench batch_listing [--rows 1000000,10000000] [--batches 10,100] [--repeat 5] [--no-write]
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
import pyarrow as pa

from bench.common import RESULTS, machine


def build_table(lake, uri: str, rows: int, batches: int, columns: int) -> None:
    from loopline.storage import delta

    rng = np.random.default_rng(0)
    per = rows // batches
    for b in range(batches):
        table = pa.table(
            {
                **{f"c{i:02d}": rng.standard_normal(per) for i in range(columns)},
                "_batch_id": pa.array([f"batch{b:015d}"] * per, pa.string()),
            }
        )
        options = {"compression": "snappy", "use_dictionary": ["_batch_id"]}
        delta.append_once(lake, uri, table, app_id=f"bench-{b}", parquet_options=options)


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench batch_listing", description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="1000000,10000000")
    p.add_argument("--batches", default="10,100")
    p.add_argument("--columns", type=int, default=38)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from loopline.features.table import _distinct
    from loopline.storage import delta
    from loopline.storage.lake import Lake

    sizes = list(
        zip([int(r) for r in args.rows.split(",")], [int(b) for b in args.batches.split(",")], strict=True)
    )
    load_before = os.getloadavg()
    per_size = {}
    for rows, batches in sizes:
        root = Path(tempfile.mkdtemp(prefix="loopline-bench-batches-"))
        try:
            lake = Lake(root=str(root))
            uri = lake.table_uri("clean", "bench")
            build_table(lake, uri, rows, batches, args.columns)
            ours, from_log = best_of(
                lambda lake=lake, uri=uri: delta.distinct_from_log(delta.open_table(lake, uri), "_batch_id"),
                args.repeat,
            )
            peer, (from_rows,) = best_of(
                lambda lake=lake, uri=uri: _distinct(
                    delta.dataset(delta.open_table(lake, uri)), ["_batch_id"]
                ),
                args.repeat,
            )
            assert from_log is not None and sorted(from_log) == sorted(from_rows), "the two lists differ"
            per_size[str(rows)] = {
                "batches": batches,
                "ours_s": round(ours, 5),
                "peer_s": round(peer, 5),
                "ratio": round(peer / ours, 1),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
            print(
                f"{rows} rows, {batches} batches: log {ours * 1000:.1f} ms, rows {peer * 1000:.1f} ms, "
                f"{peer / ours:.1f}x (load {os.getloadavg()[0]:.2f})"
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    largest = per_size[str(sizes[-1][0])]
    result = {
        "name": "batch_listing",
        "machine": machine(),
        "params": {
            "sizes": [{"rows": r, "batches": b} for r, b in sizes],
            "columns": args.columns,
            "repeat": args.repeat,
            "metric": "seconds to list clean/D's batches (best of repeat), largest size",
        },
        "ours": largest["ours_s"],
        "peer": largest["peer_s"],
        "ratio": round(largest["peer_s"] / largest["ours_s"], 1),
        "unit": "s",
        "peer_name": "the `_batch_id` column read from every data file (the build before)",
        "details": {
            "per_size": per_size,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "batch_listing.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
