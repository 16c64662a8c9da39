"""The parallel ingest (data.executor: dask) for tests: a folder of small files with every awkward case, a
Dask LocalCluster of worker processes, the local executor's result to hold it to, and the tables compared
row by row.

The folder (`write_folder`): ids overlap between neighbouring files and repeat inside files, every third file
has rows that break the contract, and optionally a file with a missing column (rejected as a whole), an
empty file (unreadable) and a byte-for-byte copy of an earlier file (a duplicate batch within the run).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests import data_support as ds

COMPARED = (
    "batch_id",
    "source",
    "rows_in",
    "rows_clean",
    "rows_quarantined",
    "duplicate_batch",
    "accepted",
    "reason",
)


def write_folder(
    folder: Path, files: int, *, awkward: bool = True, rows: int = 60, chain: bool = True
) -> list[Path]:
    """`files` CSV files, each repeating one of its ids; neighbours share rows // 3 ids (`chain`: every file
    with the next, so each waits for the one before; else pairs: files 2m and 2m+1, pairs run at once)."""
    paths = []
    for k in range(files):
        shift = rows - rows // 3
        start = k * shift if chain else (k // 2) * 2 * rows + (k % 2) * shift
        ids = list(range(start, start + rows)) + [start + 1]
        path = ds.write_batch(folder / f"f{k:03d}.csv", ids)
        if k % 3 == 0:  # a bad category and an age under the minimum
            lines = path.read_text().splitlines()
            for i, line in ((3, lines[3]), (6, lines[6])):
                cells = line.split(",")
                if i == 3:
                    cells[3] = "bogus"
                else:
                    cells[1] = "7"
                lines[i] = ",".join(cells)
            path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    if awkward and files >= 4:
        missing = folder / f"f{files:03d}-missing-column.csv"
        text = paths[1].read_text().splitlines()
        missing.write_text("\n".join(",".join(line.split(",")[:-1]) for line in text) + "\n")
        (folder / f"f{files + 1:03d}-empty.csv").write_text("")
        (folder / f"f{files + 2:03d}-copy.csv").write_bytes(paths[2].read_bytes())
    return sorted(folder.glob("*.csv"))


def start_cluster(workers: int = 2):
    """A LocalCluster of single-threaded worker processes (they inherit this process's environment: the
    Prefect API) with Great Expectations and the core imported on every worker up front."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    client = Client(cluster)
    client.run(_warm)
    return cluster, client


def set_worker_env(name: str, value: str | None) -> None:
    """Run on each worker (`client.run`): set or clear one environment variable of the worker process."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _warm() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations  # noqa: F401

    import loopline.data.parallel  # noqa: F401
    import tasks.ingest_dask  # noqa: F401


def local_reference(home: Path, contract_path: Path, folder: Path) -> list[dict]:
    """The local executor's results for the folder (core ingest, one file after another)."""
    from loopline.data.ingest import ingest_source

    contract, lake, cfg = ds.setup(home, contract_path)
    return [r.as_dict() for r in ingest_source(str(folder), contract, lake, cfg)]


def comparable(result: dict) -> dict:
    out = {k: result[k] for k in COMPARED}
    out["per_expectation"] = [
        (e["check"], e.get("column"), e["unexpected_count"], e.get("gx_unexpected_count"))
        for e in result.get("per_expectation") or []
    ]
    return out


def rows(lake, kind: str) -> list[dict]:
    """Every row of raw/quarantine/clean, less the ingest time, in a stable order."""
    t = ds.table(lake, kind)
    if t is None:
        return []
    t = t.drop_columns([c for c in ("_ingested_at",) if c in t.column_names])
    key = "_row" if "_row" in t.column_names else "customer_id"
    return sorted(t.to_pylist(), key=lambda r: (r["_batch_id"], r[key]))


def doubled_and_lost(lake, expected: dict[str, list[dict]]) -> tuple[int, int]:
    """Rows doubled and rows lost per table against the expected rows (each table's rows as multisets)."""
    from collections import Counter

    doubled = lost = 0
    for kind, want in expected.items():
        have = Counter(_key(r) for r in rows(lake, kind))
        need = Counter(_key(r) for r in want)
        doubled += sum((have - need).values())
        lost += sum((need - have).values())
    return doubled, lost


def _key(row: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items()))


def unfinished_task_runs(name: str) -> list:
    """Task runs named like `name` that the API still shows Running or Pending."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    unfinished = TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_=name), state=TaskRunFilterState(type=unfinished)
            )
        )
