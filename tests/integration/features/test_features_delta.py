"""features/D on real Delta tables: incremental builds, time travel, the versioned transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loopline.config import LifecycleConfig, SyntheticConfig
from loopline.data.contracts import load_contract
from loopline.data.ingest import ingest_source
from loopline.data.synthetic import generate_frame, write_source
from loopline.features import build_features, get_features, load_transform, read_split, read_split_frame
from loopline.storage.lake import Lake

REPO = Path(__file__).resolve().parents[3]


def land(home: Path, tmp: Path, seed: int, offset: int, rows: int = 800) -> None:
    cfg = LifecycleConfig(home=str(home))
    frame = generate_frame(SyntheticConfig(rows=rows, seed=seed, id_offset=offset))
    src = write_source(frame, tmp / f"b{seed}.parquet")
    ingest_source(str(src), load_contract(REPO / "contracts" / "demo.yaml"), Lake.from_env(str(home)), cfg)


def test_incremental_features_time_travel_and_same_transform(home, tmp_path, monkeypatch):
    import loopline.features.table as table

    read_columns = []  # the `_distinct` calls: clean/D's batches come from its Delta log, not its rows
    distinct = table._distinct
    monkeypatch.setattr(table, "_distinct", lambda ds, cols: read_columns.append(cols) or distinct(ds, cols))
    lake = Lake.from_env(str(home))
    contract = load_contract(REPO / "contracts" / "demo.yaml")
    cfg = LifecycleConfig(home=str(home)).features
    land(home, tmp_path, seed=1, offset=0)
    first = build_features(lake, contract, cfg)
    assert first["new_batches"] == 1 and first["rows_added"] == 800
    assert build_features(lake, contract, cfg)["new_batches"] == 0  # nothing new: no commit

    land(home, tmp_path, seed=2, offset=10_000)
    second = build_features(lake, contract, cfg)
    assert second["new_batches"] == 1 and second["features_version"] == first["features_version"] + 1
    assert second["transform_version"] == first["transform_version"]  # old rows keep their values
    # the demo's 38 columns put `_batch_id` past Delta's 32 columns of statistics: it has them all the same
    assert ["_batch_id"] not in read_columns, read_columns

    old = read_split(lake, "demo", "train", version=first["features_version"])
    new = read_split(lake, "demo", "train")
    assert len(new.X) > len(old.X) and set(old.ids) <= set(new.ids)
    assert abs(len(old.X) / 800 - 0.8) < 0.06
    frame = read_split_frame(lake, "demo", "test", as_of_version=first["features_version"])
    assert set(frame["_split"]) == {"test"} and frame["customer_id"].max() < 10_000
    assert get_features(lake, "demo", [10_001, 10_002], as_of_version=first["features_version"]).empty
    assert len(get_features(lake, "demo", [10_001, 10_002])) == 2

    transform = load_transform(lake, "demo", new.transform_version)
    clean = lake.table_uri("clean", "demo")
    from deltalake import DeltaTable

    rows = DeltaTable(clean).to_pandas()
    rows = (
        rows[rows["customer_id"].isin(new.ids[:50])].set_index("customer_id").loc[new.ids[:50]].reset_index()
    )
    np.testing.assert_allclose(transform.transform(rows), new.X[:50], rtol=1e-6)  # serving == training

    refit = build_features(lake, contract, cfg.model_copy(update={"numeric": "log1p"}), refit=True)
    assert refit["transform_version"] != first["transform_version"] and refit["rows_added"] == 1600
    assert read_split(lake, "demo", "train").transform_version == refit["transform_version"]
    assert (
        read_split(lake, "demo", "train", version=second["features_version"]).transform_version
        == first["transform_version"]
    )
