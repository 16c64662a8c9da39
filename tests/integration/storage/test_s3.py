"""Ingest from s3:// into a lake on s3:// through a real S3 endpoint (moto_server), then build features."""

from __future__ import annotations

from pathlib import Path

import boto3

from loopline.config import LifecycleConfig, SyntheticConfig
from loopline.data.contracts import load_contract
from loopline.data.ingest import ingest_source
from loopline.data.synthetic import generate_frame, write_source
from loopline.features import build_features, get_features, read_split
from loopline.storage import delta
from loopline.storage.lake import Lake

REPO = Path(__file__).resolve().parents[3]


def test_s3_source_into_s3_lake(moto_s3, home, tmp_path, monkeypatch):
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="landing")
    s3.create_bucket(Bucket="lake")
    for i, fmt in enumerate(["parquet", "csv"]):
        frame = generate_frame(SyntheticConfig(rows=400, seed=i, id_offset=1000 * i, bad_fraction=0.01))
        path = write_source(frame, tmp_path / f"part-{i}.{fmt}", fmt)
        s3.upload_file(str(path), "landing", f"in/part-{i}.{fmt}")
    for key, value in {
        "LOOPLINE_LAKE_URI": "s3://lake/loopline",
        "AWS_ENDPOINT_URL": moto_s3["endpoint_url"],
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(key, value)
    lake = Lake.from_env(str(home))
    assert lake.is_s3 and lake.storage_options["AWS_ALLOW_HTTP"] == "true"
    cfg = LifecycleConfig(home=str(home))
    contract = load_contract(REPO / "contracts" / "demo.yaml")

    results = ingest_source("s3://landing/in/", contract, lake, cfg)
    assert [r.accepted for r in results] == [True, True]
    assert sum(r.rows_in for r in results) == 800
    assert all(r.source.startswith("s3://landing/in/") for r in results)
    again = ingest_source("s3://landing/in/part-0.parquet", contract, lake, cfg)
    assert again[0].duplicate_batch

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="loopline/clean/demo/")["Contents"]]
    assert any(k.endswith(".parquet") for k in keys) and any("_delta_log" in k for k in keys)
    clean_rows = delta.open_table(lake, lake.table_uri("clean", "demo")).to_pyarrow_dataset().count_rows()
    assert clean_rows == sum(r.rows_clean for r in results)

    feats = build_features(lake, contract, cfg.features)
    assert feats["rows_added"] == clean_rows
    train = read_split(lake, "demo", "train")
    assert train.X.shape[1] == len(train.feature_names) and len(train.y) == len(train.X)
    some = get_features(lake, "demo", train.ids[:5].tolist())
    assert sorted(some["customer_id"].tolist()) == sorted(train.ids[:5].tolist())
