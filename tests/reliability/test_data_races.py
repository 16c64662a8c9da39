"""Races in the data plane, with plain processes calling the core (no Prefect: the core alone must be safe).

- 4 processes ingest overlapping batches (ids shared with each other, with clean/D, and within a batch) into
  one dataset at once: ids stay unique in clean/D, every id lands once, raw = clean + quarantine.
- 5 features builds run at once while 2 more batches are ingested: each clean batch lands in features/D once.
"""

from __future__ import annotations

from pathlib import Path

from tests import data_support as ds
from tests.reliability.conftest import rounds


def overlapping_batches(tmp: Path, tag: str, n: int, start: int) -> tuple[list[Path], set[int]]:
    """`n` batches of 60 ids, each sharing 30 with the next, plus 5 repeats of its own ids."""
    paths, every = [], set()
    for k in range(n):
        ids = list(range(start + 30 * k, start + 30 * k + 60))
        ids += ids[:5]  # duplicates within the batch: the later rows are quarantined
        every |= set(ids)
        paths.append(ds.write_batch(tmp / f"{tag}-{k}.csv", ids))
    return paths, every


def test_concurrent_ingests_of_overlapping_ids(home, tmp_path, reliability_report):
    tries = rounds(1, 5)
    ds.context()  # the worker processes' server starts while this process works
    contract_path = ds.write_contract(tmp_path)
    _, lake, _ = ds.setup(home, contract_path)
    ds.ingest(home, contract_path, ds.write_batch(tmp_path / "base.csv", list(range(1, 41))))
    expected, lost, doubled = set(range(1, 41)), 0, 0
    for t in range(tries):
        paths, ids = overlapping_batches(tmp_path, f"t{t}", 4, start=20 + 200 * t)  # overlaps base in round 0
        before = set(ds.clean_ids(lake))
        expected |= ids
        results, codes = ds.run_workers([("ingest", p, None) for p in paths], home, contract_path)
        assert codes == [0] * 4 and all(r["ok"] for r in results), results
        assert all(r["accepted"] and r["rows_in"] == 65 for r in results)
        clean = ds.clean_ids(lake)
        doubled += len(clean) - len(set(clean))
        c = ds.counts(lake)
        lost += len(expected - set(clean)) + (c["raw"] - c["clean"] - c["quarantine"])
        assert len(clean) == len(set(clean)) and set(clean) == expected
        assert c["raw"] == c["clean"] + c["quarantine"]
        raw, cl, q = (ds.per_batch(lake, kind) for kind in ("raw", "clean", "quarantine"))
        assert all(raw[b] == cl.get(b, 0) + q.get(b, 0) for b in raw)
        assert sum(r["rows_clean"] for r in results) == len(ids - before)  # results agree with the tables
    reliability_report.add("4 concurrent ingests, overlapping ids", tries=tries, lost=lost, doubled=doubled)


def test_concurrent_features_builds(home, tmp_path, reliability_report):
    tries = rounds(1, 5)
    ds.context()  # the worker processes' server starts while this process works
    contract_path = ds.write_contract(tmp_path)
    _, lake, _ = ds.setup(home, contract_path)
    ds.ingest(home, contract_path, ds.write_batch(tmp_path / "a.csv", list(range(1, 61))))
    lost = doubled = 0
    for t in range(tries):
        starts = [1000 * (t + 1) + 100 * k for k in range(2)]
        more = [ds.write_batch(tmp_path / f"t{t}-{s}.csv", list(range(s, s + 60))) for s in starts]
        jobs = [("features", None, None)] * 5 + [("ingest", p, None) for p in more]
        results, codes = ds.run_workers(jobs, home, contract_path)
        assert codes == [0] * 7 and all(r["ok"] for r in results), results
        ds.build(home, contract_path)  # whatever the racing builds missed (a batch that landed after them)
        d, lo = ds.features_doubled(lake)
        doubled, lost = doubled + d, lost + lo
        assert (d, lo) == (0, 0)
        assert ds.per_batch(lake, "features") == ds.per_batch(lake, "clean")
    reliability_report.add("5 concurrent features builds", tries=tries, lost=lost, doubled=doubled)
