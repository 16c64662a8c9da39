"""kill -9 in the data plane, then rerun: a plain process calling the core SIGKILLs itself at a fixed kill point
(loopline.faults), and the rerun must complete the batch exactly.

- ingest: the kills go round the points between and around its commits (raw, clean, quarantine, the ledger,
  and while a commit's files are being written); after each rerun the counts are exact (every batch's rows in
  raw = clean + quarantine, first arrival wins across batches, duplicates within a batch quarantined) and no id
  is twice in clean/D.
- features: the kills go round the points around its commit; after each rerun every clean batch is in
  features/D exactly once.
"""

from __future__ import annotations

from tests import data_support as ds
from tests.reliability.conftest import rounds

# the most harmful first: `make test` runs the first few
INGEST_POINTS = (
    "ingest.after_clean",  # clean committed, quarantine not: the rerun must find the moved rows again
    "ingest.clean_writing",  # clean's files half written, no commit
    "ingest.after_raw",
    "ingest.after_quarantine",  # everything but the ledger row
    "ingest.raw_writing",
    "ingest.before_clean",
    "ingest.after_ledger",
    "ingest.before_raw",
)
FEATURES_POINTS = ("features.after_commit", "features.writing", "features.before_commit")


def test_kill_during_ingest_then_rerun(home, tmp_path, reliability_report):
    tries = rounds(3, 20)
    ds.context()  # the worker processes' server starts while this process works
    contract_path = ds.write_contract(tmp_path)
    _, lake, _ = ds.setup(home, contract_path)
    ds.ingest(home, contract_path, ds.write_batch(tmp_path / "base.csv", list(range(1, 31))))
    seen, expected_raw = set(range(1, 31)), 30
    lost = doubled = 0
    for i in range(tries):
        point = INGEST_POINTS[i % len(INGEST_POINTS)]
        ids = list(range(20 + 20 * i, 60 + 20 * i))  # half of them ingested before
        ids += ids[-3:]  # and 3 repeats within the batch
        source = ds.write_batch(tmp_path / f"b{i}.csv", ids)
        _, codes = ds.run_workers([("ingest", source, point)], home, contract_path)
        assert codes == [-9], f"the ingest did not die at {point}"
        result = ds.ingest(home, contract_path, source)  # the rerun
        new = set(ids) - seen
        seen |= set(ids)
        expected_raw += len(ids)
        clean = ds.clean_ids(lake)
        c = ds.counts(lake)
        split = c["clean"] + c["quarantine"]
        doubled += len(clean) - len(set(clean)) + max(0, c["raw"] - expected_raw) + max(0, split - c["raw"])
        lost += len(seen - set(clean)) + max(0, expected_raw - c["raw"]) + max(0, c["raw"] - split)
        assert result["accepted"], point
        assert (result["rows_in"], result["rows_clean"]) == (len(ids), len(new)), point
        assert len(clean) == len(set(clean)) and set(clean) == seen, point
        assert c["raw"] == expected_raw == c["clean"] + c["quarantine"], point
        assert ds.per_batch(lake, "clean").get(result["batch_id"]) == len(new), point
    reliability_report.add("kill -9 during ingest, then rerun", tries=tries, lost=lost, doubled=doubled)


def test_kill_during_features_then_rerun(home, tmp_path, reliability_report):
    tries = rounds(2, 10)
    ds.context()  # the worker processes' server starts while this process works
    contract_path = ds.write_contract(tmp_path)
    _, lake, _ = ds.setup(home, contract_path)
    lost = doubled = 0
    for i in range(tries):
        point = FEATURES_POINTS[i % len(FEATURES_POINTS)]
        ds.ingest(
            home, contract_path, ds.write_batch(tmp_path / f"b{i}.csv", list(range(100 * i, 100 * i + 50)))
        )
        _, codes = ds.run_workers([("features", None, point)], home, contract_path)
        assert codes == [-9], f"the features build did not die at {point}"
        ds.build(home, contract_path)  # the rerun
        d, lo = ds.features_doubled(lake)
        doubled, lost = doubled + d, lost + lo
        assert (d, lo) == (0, 0), point
        assert ds.per_batch(lake, "features") == ds.per_batch(lake, "clean"), point
    reliability_report.add("kill -9 during features, then rerun", tries=tries, lost=lost, doubled=doubled)
