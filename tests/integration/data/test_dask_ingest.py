"""data.executor: dask — a folder validated in parallel on a Dask LocalCluster of 2 worker processes through
prefect-dask's DaskTaskRunner, committed by the flow process: every result, count, quarantined row and reason
equals the local executor's (one file after another), features/D and clean/D's drift profile built per
partition on the cluster equal the single-process ones bit for bit, a re-ingest is a no-op, and a file whose validation raises fails by name
while the others land (prefect#21638: the loop reads the task's real outcome).

One LocalCluster for the module (its workers import Great Expectations once); a real Prefect API."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopline.config import LifecycleConfig
from loopline.data.parallel import FAIL_ENV
from loopline.errors import DataQualityError
from tests import dask_support as dk
from tests import data_support as ds

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(prefect_api):
    cluster, client = dk.start_cluster(2)
    yield cluster, client
    client.close()
    cluster.close()


def dask_config(home: Path, contract_path: Path, folder: Path, address: str) -> LifecycleConfig:
    return LifecycleConfig(
        home=str(home),
        validation={"data_docs": False},
        data={
            "contract": str(contract_path),
            "source": str(folder),
            "executor": "dask",
            "dask_address": address,
        },
    )


def test_dask_ingest_and_features_equal_the_local_executor_and_reingest_is_a_no_op(cluster, home, tmp_path):
    from flows.ingest import ingest_flow, ingest_on_dask

    contract_path = ds.write_contract(tmp_path)
    files = dk.write_folder(
        tmp_path / "src", 20, chain=False
    )  # + a missing-column file, an empty file, a copy
    expected = dk.local_reference(tmp_path / "ref", contract_path, tmp_path / "src")
    local_lake = ds.setup(tmp_path / "ref", contract_path)[1]
    cfg = dask_config(home, contract_path, tmp_path / "src", cluster[0].scheduler_address)

    got = ingest_on_dask([str(f) for f in files], cfg)

    assert [dk.comparable(r) for r in got] == [dk.comparable(r) for r in expected]
    lake = ds.setup(home, contract_path)[1]
    for kind in ("raw", "clean", "quarantine"):
        assert dk.rows(lake, kind) == dk.rows(local_lake, kind), kind
    clean = ds.clean_ids(lake)
    assert len(clean) == len(set(clean))  # ids unique across files
    assert sum(r["rows_quarantined"] for r in got) > 0 and any(r["duplicate_batch"] for r in got)
    assert [r["accepted"] for r in got].count(False) == 2  # the missing column and the empty file
    assert not list((Path(lake.root) / "_staging" / "ingest").glob("*/*"))  # staging cleaned up

    # features per partition on the cluster: the single-process table's rows, bit for bit (row order within
    # a Delta table is not a property: a single-process build's own order varies with its scan threads)
    from flows.features import features_flow

    built = features_flow(cfg)
    reference = ds.build(tmp_path / "ref", contract_path)
    assert (built["new_batches"], built["rows_added"]) == (reference["new_batches"], reference["rows_added"])
    assert built["transform_version"] == reference["transform_version"]
    order = [("_batch_id", "ascending"), ("customer_id", "ascending")]
    assert ds.table(lake, "features").sort_by(order).equals(ds.table(local_lake, "features").sort_by(order))
    assert not list((Path(lake.root) / "_staging" / "features").glob("*/*"))

    # the drift profile of clean/D per partition (a few data files each) equals the single-process one
    from flows.reference_profile import profile_on_dask
    from loopline.monitoring.profile import build_reference_profile

    cols = (["age", "income"], ["segment"])
    opts = {"bins": 5, "cdf_bins": 16, "raw_max_rows": 10}  # small: the binned form, not raw values
    merged = profile_on_dask(cfg, "clean", "ledger", *cols, **opts)
    whole = build_reference_profile(ds.table(lake, "clean").to_pandas(), *cols, **opts)
    assert merged == whole and merged["numeric"]["age"]["edges"]

    counts = ds.counts(lake)
    with pytest.raises(DataQualityError) as again:  # through the ingest flow; the two bad files stay bad
        ingest_flow(cfg)
    batches = again.value.summary["batches"]
    assert all(b["duplicate_batch"] for b in batches if b["accepted"])
    assert ds.counts(lake) == counts


def test_a_file_whose_validation_raises_fails_by_name_and_the_rest_lands(cluster, home, tmp_path):
    from flows.ingest import ingest_on_dask
    from tasks.ingest_dask import IngestFailedError

    _, client = cluster
    contract_path = ds.write_contract(tmp_path)
    files = dk.write_folder(tmp_path / "src", 5, awkward=False)
    cfg = dask_config(home, contract_path, tmp_path / "src", cluster[0].scheduler_address)
    client.run(dk.set_worker_env, FAIL_ENV, "ingest.validate:f003.csv")
    try:
        with pytest.raises(IngestFailedError) as failed:
            ingest_on_dask([str(f) for f in files], cfg)
    finally:
        client.run(dk.set_worker_env, FAIL_ENV, None)
    message = str(failed.value)
    assert "1 of 5 file(s) failed" in message and "f003.csv" in message and "injected failure" in message
    by_file = {Path(r["source"]).name: r for r in failed.value.results}
    assert not by_file["f003.csv"]["accepted"] and by_file["f003.csv"]["rows_clean"] == 0
    assert all(by_file[f"f00{k}.csv"]["accepted"] for k in (0, 1, 2, 4))
    lake = ds.setup(home, contract_path)[1]
    assert set(ds.per_batch(lake, "raw")) == {by_file[f"f00{k}.csv"]["batch_id"] for k in (0, 1, 2, 4)}
    assert not dk.unfinished_task_runs("validate-file")  # no task run left Running (prefect#21638)

    # ingested again, the failed file lands and the rest is a no-op
    again = ingest_on_dask([str(f) for f in files], cfg)
    assert [r["duplicate_batch"] for r in again] == [True, True, True, False, True]
    assert again[3]["accepted"] and again[3]["rows_in"] == 61
