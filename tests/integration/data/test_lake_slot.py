"""Where Prefect runs the data plane, the tasks that write a dataset's tables (ingest, features) hold its lake
slot, the global concurrency limit `lake-<dataset>` (one slot, created when missing); a wait past
data.lake_slot_timeout_seconds fails with an error naming the limit, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopline.config import LifecycleConfig
from loopline.errors import WaitTimeoutError
from tests import data_support as ds

pytestmark = pytest.mark.integration


def test_ingest_and_features_tasks_wait_for_the_dataset_slot(prefect_api, home: Path, tmp_path: Path):
    from prefect import get_client

    from tasks.features import build_features
    from tasks.ingest import ingest_batch
    from tasks.locks import lake_limit_name, lake_slot

    cfg = LifecycleConfig(home=str(home), validation={"data_docs": False})
    cfg.data.contract = str(ds.write_contract(tmp_path))
    cfg.data.lake_slot_timeout_seconds = 60  # a free slot: taken at once, however slow the machine
    blocked = cfg.model_copy(deep=True)
    blocked.data.lake_slot_timeout_seconds = 1
    source = ds.write_batch(tmp_path / "a.csv", list(range(1, 21)))
    _, lake, _ = ds.setup(home, Path(cfg.data.contract))
    name = lake_limit_name("ledger")
    with lake_slot("ledger", 60):  # another writer of the dataset holds it
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).limit == 1  # created on first use
        with pytest.raises(WaitTimeoutError, match=name) as err:
            ingest_batch(str(source), blocked)
        assert "data.lake_slot_timeout_seconds" in str(err.value)
        assert ds.counts(lake) == {"raw": 0, "clean": 0, "quarantine": 0, "features": 0}
    assert ingest_batch(str(source), cfg)["rows_clean"] == 20  # the slot is free again
    with lake_slot("ledger", 60):
        with pytest.raises(WaitTimeoutError, match=name):
            build_features(blocked)
    assert build_features(cfg)["rows_added"] == 20
