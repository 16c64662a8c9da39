"""The data plane under concurrency and kills, for tests: a small non-demo dataset (tests.datasets.CREDIT, every
third batch row reuses an id of its own batch or of another), plain worker processes that call the core, and the
counts the tests hold (per batch, per table).

Workers run in processes forked from one forkserver that imported the core (and Great Expectations) once, so a
worker costs a fork instead of an interpreter start; each is given everything by argument (the forkserver's
environment is the one it started with) and may SIGKILL itself at a kill point (LOOPLINE_KILL_AT).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import yaml

from tests.datasets import CREDIT

CONTRACT = {**CREDIT, "dataset": "ledger", "quarantine_max_fraction": 1.0}  # overlaps quarantine a lot
HEADER = "customer_id,age,income,segment,note,signup_at,default"
# great_expectations is imported lazily by the gate (~4 s): once here, not once per worker
PRELOAD = ["great_expectations", "loopline.data.ingest", "loopline.features.table", "tests.data_support"]
_ctx = None


def context():
    """The forkserver context (its server started on first use, importing the core once)."""
    global _ctx
    if _ctx is None:
        from multiprocessing import forkserver

        _ctx = multiprocessing.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()  # it imports PRELOAD meanwhile: call this early, before other work
    return _ctx


def write_contract(directory: Path) -> Path:
    path = directory / "ledger.yaml"
    path.write_text(yaml.safe_dump(CONTRACT))
    return path


def write_batch(path: Path, ids: list[int]) -> Path:
    """A CSV batch with these ids (repeats allowed: a later repeat is a duplicate within the batch)."""
    segs = ["retail", "sme", "corp"]
    lines = [HEADER] + [
        f"{i},{20 + i % 80},{1000.5 * (i % 97)},{segs[i % 3]},n{i},2025-01-{1 + i % 28:02d}T10:00:00,{i % 2}"
        for i in ids
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def setup(home: Path, contract_path: Path, lake=None):
    """(contract, lake, cfg) for a home (its local lake unless `lake`, e.g. one on S3, is given); no Data
    Docs (they cost time and are not what is tested)."""
    from loopline.config import LifecycleConfig
    from loopline.data.contracts import load_contract
    from loopline.storage.lake import Lake

    cfg = LifecycleConfig(home=str(home), validation={"data_docs": False})
    cfg.data.contract = str(contract_path)
    return load_contract(contract_path), lake or Lake(root=str(home / "lake")), cfg


def ingest(home: Path, contract_path: Path, source: Path, lake=None) -> dict:
    from loopline.data.ingest import ingest_file

    contract, lake, cfg = setup(home, contract_path, lake)
    return ingest_file(str(source), contract, lake, cfg).as_dict()


def build(home: Path, contract_path: Path, lake=None) -> dict:
    from loopline.features.table import build_features

    contract, lake, cfg = setup(home, contract_path, lake)
    return build_features(lake, contract, cfg.features)


def s3_lake(moto_s3: dict, bucket: str):
    """A lake in a new bucket of the `moto_s3` endpoint."""
    from loopline.storage.lake import Lake

    lake = Lake(
        root=f"s3://{bucket}/lake",
        endpoint_url=moto_s3["endpoint_url"],
        region=moto_s3["region"],
        access_key_id=moto_s3["access_key_id"],
        secret_access_key=moto_s3["secret_access_key"],
    )
    lake.s3_client().create_bucket(Bucket=bucket)
    return lake


def worker(
    kind: str, home: str, contract_path: str, source: str | None, kill_at: str | None, barrier, out: str, lake
):
    """One plain process: wait for the others, then ingest `source` or build features (dying at `kill_at`).
    Writes its result (or error) as JSON to `out`/<pid>.json."""
    os.environ.pop("LOOPLINE_KILL_AT", None)
    if kill_at:
        os.environ["LOOPLINE_KILL_AT"] = kill_at
    if barrier is not None:
        barrier.wait(timeout=60)
    try:
        if kind == "ingest":
            result = ingest(Path(home), Path(contract_path), Path(source), lake)
        else:
            result = build(Path(home), Path(contract_path), lake)
        record = {"ok": True, **{k: v for k, v in result.items() if k != "per_expectation"}}
    except BaseException as exc:  # reported to the test, which fails on it
        record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    Path(out, f"{os.getpid()}.json").write_text(json.dumps(record, default=str))


def run_workers(
    jobs: list[tuple[str, Path | None, str | None]], home: Path, contract_path: Path, lake=None
) -> tuple[list[dict], list[int | None]]:
    """Start one process per (kind, source, kill_at) job, all released at once; wait for every one.
    Returns (results, exit codes): results of the processes that finished, exit codes of all (-9: killed)."""
    ctx = context()
    out = Path(tempfile.mkdtemp(prefix="workers-", dir=home))
    barrier = ctx.Barrier(len(jobs)) if len(jobs) > 1 else None
    procs = [
        ctx.Process(
            target=worker,
            args=(
                kind,
                str(home),
                str(contract_path),
                str(src) if src else None,
                kill,
                barrier,
                str(out),
                lake,
            ),
        )
        for kind, src, kill in jobs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    results = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    return results, [p.exitcode for p in procs]


def table(lake, kind: str, dataset: str = "ledger", columns: list[str] | None = None):
    from loopline.storage import delta

    t = delta.open_table(lake, lake.table_uri(kind, dataset))
    return None if t is None else delta.dataset(t).to_table(columns=columns)


def counts(lake, dataset: str = "ledger") -> dict[str, int]:
    return {
        kind: 0 if (t := table(lake, kind, dataset, ["_batch_id"])) is None else t.num_rows
        for kind in ("raw", "clean", "quarantine", "features")
    }


def per_batch(lake, kind: str, dataset: str = "ledger") -> dict[str, int]:
    t = table(lake, kind, dataset, ["_batch_id"])
    if t is None:
        return {}
    vc = pc.value_counts(t["_batch_id"])
    return {v["values"].as_py(): v["counts"].as_py() for v in vc}


def clean_ids(lake, dataset: str = "ledger") -> list[int]:
    t = table(lake, "clean", dataset, ["customer_id"])
    return [] if t is None else t["customer_id"].to_pylist()


def features_doubled(lake, dataset: str = "ledger") -> tuple[int, int]:
    """(rows doubled, rows lost) of features/D against clean/D: each clean row must be there exactly once."""
    clean = table(lake, "clean", dataset, ["customer_id", "_batch_id"])
    feats = table(lake, "features", dataset, ["customer_id", "_batch_id"])
    want = {(r["customer_id"], r["_batch_id"]) for r in clean.to_pylist()}
    have = [(r["customer_id"], r["_batch_id"]) for r in feats.to_pylist()] if feats is not None else []
    doubled = len(have) - len(set(have))
    lost = len(want - set(have))
    return doubled, lost
