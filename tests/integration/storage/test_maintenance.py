"""Lake maintenance on real Delta tables (loopline/storage/maintenance.py): predictions/M with many small
commits is expired (exactly the rows scored before the retention; one just inside stays), compacted (same
rows, fewer files) and vacuumed (no unreferenced file left, the bytes counted); clean/D keeps every version
a model recorded; a serving-log writer appending all the while loses no row; the same on S3 (moto_server);
and the `loopline maintenance` command and the `maintenance` deployment of prefect.yaml, on the session's
Prefect API with a version an MLflow run recorded."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from loopline.config import LakeConfig
from loopline.data.contracts import parse_contract
from loopline.errors import ConfigError
from loopline.serving.inference_log import log_schema
from loopline.storage import delta
from loopline.storage.lake import Lake
from loopline.storage.maintenance import maintain_lake
from tests.cli_support import run_cli

CONTRACT = parse_contract(
    {
        "dataset": "parcels",
        "id": "parcel_id",
        "label": "late",
        "task": "binary",
        "columns": {
            "parcel_id": {"type": "int"},
            "weight_kg": {"type": "float", "min": 0},
            "late": {"type": "int", "values": [0, 1]},
        },
    }
)
SCHEMA = log_schema(CONTRACT)
NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)  # lake.predictions_retention_days' default


def scored(ids: range | list[int], at: datetime | list[datetime]) -> pa.Table:
    """Rows as the inference log writes them (the predictions/M schema of CONTRACT)."""
    ids = list(ids)
    stamps = at if isinstance(at, list) else [at] * len(ids)
    return pa.Table.from_pylist(
        [
            {
                "parcel_id": i,
                "weight_kg": 1.5,
                "_prediction": 0.25,
                "_model_version": "1",
                "_role": "champion",
                "_request_id": f"r{i}",
                "_scored_at": t,
            }
            for i, t in zip(ids, stamps, strict=True)
        ],
        schema=SCHEMA,
    )


def write_predictions(lake: Lake, model: str) -> set[int]:
    """24 small commits of 5 rows; returns the ids that must survive a 30-day retention. Expired: 20 rows a
    minute before the cutoff, plus 2 in a commit whose other 3 rows stay (the delete rewrites that file)."""
    uri = lake.uri("predictions", model)
    outside, inside = CUTOFF - timedelta(minutes=1), CUTOFF + timedelta(minutes=1)
    for c in range(24):
        ids = range(c * 5, c * 5 + 5)
        if c < 4:
            at: datetime | list[datetime] = outside
        elif c == 4:  # mixed: two expired, one exactly at the cutoff (kept), two just inside
            at = [outside, outside, CUTOFF, inside, inside]
        else:
            at = NOW - timedelta(hours=c)
        write_deltalake(uri, scored(ids, at), mode="append", storage_options=lake.storage_options)
    return set(range(22, 120))


def ids_at(lake: Lake, uri: str, version: int | None = None) -> list[int]:
    table = delta.open_table(lake, uri, version)
    return sorted(delta.dataset(table).to_table(columns=["parcel_id"]).column(0).to_pylist())


def data_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.glob("*.parquet")}


def test_predictions_are_expired_compacted_and_vacuumed(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    kept = write_predictions(lake, "parcels")
    uri = lake.uri("predictions", "parcels")
    recorded = delta.table_version(lake, uri)  # a reader (the drift window, a debugging user) pinned this

    # A dry run counts the same and changes nothing
    dry = maintain_lake(lake, LakeConfig(), model="parcels", dry_run=True, now=NOW)
    assert dry["rows_deleted"] == 22 and dry["tables"][0]["compacted"]
    assert delta.table_version(lake, uri) == recorded

    # Default file retention (a week): expired rows gone, compacted, nothing vacuumed, time travel still works
    first = maintain_lake(lake, LakeConfig(), model="parcels", now=NOW)
    (report,) = first["tables"]
    assert report["table"] == "predictions/parcels" and first["failed"] == []
    assert report["rows_deleted"] == 22 and report["rows_before"] == 120 and report["rows_after"] == 98
    assert report["files_before"] == 24 and report["files_after"] == 1 and report["compacted"]
    assert report["files_vacuumed"] == 0 and report["version_before"] == recorded
    assert ids_at(lake, uri) == sorted(kept)  # exactly the expired rows went; the boundary row stayed
    assert ids_at(lake, uri, recorded) == list(range(120))  # within the file retention: readable

    # Retention 0 (tests only): every replaced file goes, each one counted, and only those
    root = Path(uri)
    sizes = {name: (root / name).stat().st_size for name in data_files(root)}
    second = maintain_lake(lake, LakeConfig(file_retention_hours=0), model="parcels", now=NOW)
    (report,) = second["tables"]
    live = {Path(u).name for u in DeltaTable(uri).file_uris()}
    assert data_files(root) == live and len(live) == 1
    assert (
        report["files_vacuumed"] == len(sizes) - 1 == 25
    )  # 24 written + the expiry's rewrite, less the live one
    assert report["bytes_vacuumed"] == sum(size for name, size in sizes.items() if name not in live)
    assert report["rows_deleted"] == 0 and ids_at(lake, uri) == sorted(kept)

    with pytest.raises(ConfigError, match=r"model 'nope' has no Delta tables.*known models: parcels"):
        maintain_lake(lake, LakeConfig(), model="nope")


def test_a_file_whose_tombstone_a_checkpoint_dropped_is_vacuumed_too(tmp_path):
    """A checkpoint drops the tombstones older than delta.deletedFileRetentionDuration (a week). predictions/M
    gets a checkpoint every 100 commits, so a week after a delete its tombstones are gone, and a vacuum that
    reads only tombstones ("lite") would keep every replaced file forever. Here the table's retention is 0."""
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("predictions", "parcels")
    props = {"delta.deletedFileRetentionDuration": "interval 0 seconds"}
    write_deltalake(uri, scored(range(5), NOW), configuration=props)
    write_deltalake(uri, scored(range(5, 10), NOW), mode="append")
    DeltaTable(uri).delete("parcel_id < 5")
    DeltaTable(uri).create_checkpoint()  # its tombstone is already expired: the checkpoint leaves it out
    assert len(data_files(Path(uri))) == 2

    cfg = LakeConfig(file_retention_hours=0, predictions_retention_days=None)
    (report,) = maintain_lake(lake, cfg, model="parcels")["tables"]
    assert report["files_vacuumed"] == 1 and len(data_files(Path(uri))) == 1
    assert ids_at(lake, uri) == list(range(5, 10))

    # A longer file retention than the table's tombstone retention raises the latter, for the same reason
    maintain_lake(lake, LakeConfig(file_retention_hours=720), model="parcels")
    assert DeltaTable(uri).metadata().configuration[props.popitem()[0]] == "interval 720 hours"


def test_a_version_a_model_recorded_stays_readable(tmp_path):
    """clean/D: compacted but not vacuumed by default; with lake.vacuum_pinned_tables, vacuumed keeping the
    versions listed (what MLflow runs recorded), while an unlisted old version's files go."""
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("clean", "parcels")
    for b in range(18):
        write_deltalake(uri, pa.table({"parcel_id": range(b * 10, b * 10 + 10)}), mode="append")
    recorded = delta.table_version(lake, uri)  # data.clean_version of a model
    write_deltalake(uri, pa.table({"parcel_id": range(1000, 1005)}), mode="overwrite")  # a retype rewrites

    off = maintain_lake(lake, LakeConfig(file_retention_hours=0), dataset="parcels")
    (report,) = off["tables"]
    assert report["vacuumed"] is False and "recorded version" in report["vacuum_skipped"]
    assert ids_at(lake, uri, recorded) == list(range(180))

    for b in range(18):  # more small commits: the next run compacts again
        write_deltalake(uri, pa.table({"parcel_id": range(2000 + b, 2001 + b)}), mode="append")
    unrecorded = delta.table_version(lake, uri)  # nobody listed it
    on = LakeConfig(file_retention_hours=0, vacuum_pinned_tables=True)
    (report,) = maintain_lake(lake, on, dataset="parcels", keep_versions={"clean/parcels": [recorded]})[
        "tables"
    ]
    assert report["compacted"] and report["files_vacuumed"] >= 18
    assert ids_at(lake, uri, recorded) == list(range(180))  # its 18 files were kept
    with pytest.raises(Exception, match="(?i)not found|no such file"):
        ids_at(lake, uri, unrecorded)  # its files were compacted, then vacuumed


def test_maintenance_beside_an_appending_writer_loses_no_row(tmp_path):
    """The serving log appends from a held snapshot every few ms while maintenance expires, compacts and
    vacuums twice. A conflict is retried by whichever side lost (the writer as the inference log does)."""
    lake = Lake(root=str(tmp_path / "lake"))
    kept = write_predictions(lake, "parcels")
    uri = lake.uri("predictions", "parcels")
    appended: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        table, next_id = DeltaTable(uri), 10_000
        while not stop.is_set() or len(appended) < 20:
            batch = scored(range(next_id, next_id + 3), NOW)  # inside the retention
            try:
                write_deltalake(table, batch, mode="append", schema_mode="merge")
            except CommitFailedError:  # a maintenance delete landed since our snapshot: retry on a fresh one
                table = DeltaTable(uri)
                continue
            appended.extend(range(next_id, next_id + 3))
            next_id += 3

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        cfg = LakeConfig(compact_min_files=4, file_retention_hours=1)  # 1 h: a writer's fresh file is safe
        results = [maintain_lake(lake, cfg, model="parcels", now=NOW) for _ in range(2)]
    finally:
        stop.set()
        thread.join(60)
    assert [r["failed"] for r in results] == [[], []]
    assert results[0]["rows_deleted"] == 22 and any(r["tables"][0]["compacted"] for r in results)
    assert ids_at(lake, uri) == sorted(kept | set(appended))  # every append exactly once, expired ones gone


def test_maintenance_on_an_s3_lake(moto_s3):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3["endpoint_url"],
        region_name=moto_s3["region"],
        aws_access_key_id=moto_s3["access_key_id"],
        aws_secret_access_key=moto_s3["secret_access_key"],
    )
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    lake = Lake(root=f"s3://{bucket}/loopline", **moto_s3)
    uri = lake.uri("predictions", "parcels")
    for c in range(6):
        at = CUTOFF - timedelta(minutes=1) if c < 2 else NOW
        write_deltalake(
            uri, scored(range(c * 5, c * 5 + 5), at), mode="append", storage_options=lake.storage_options
        )

    prefix = "loopline/predictions/parcels/"
    before = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    result = maintain_lake(lake, LakeConfig(compact_min_files=4, file_retention_hours=0), now=NOW)  # finds it
    (report,) = result["tables"]
    assert report["table"] == "predictions/parcels" and report["rows_deleted"] == 10
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    live = {u.rsplit("/", 1)[1] for u in DeltaTable(uri, storage_options=lake.storage_options).file_uris()}
    assert {k.rsplit("/", 1)[1] for k in after if k.endswith(".parquet")} == live and len(live) == 1
    assert report["files_vacuumed"] == 6 == len(set(before) - after)  # 2 expired whole + 4 compacted
    assert report["bytes_vacuumed"] == sum(size for key, size in before.items() if key not in after)
    rows = DeltaTable(uri, storage_options=lake.storage_options).to_pyarrow_dataset().to_table()
    assert sorted(rows.column("parcel_id").to_pylist()) == list(range(10, 30))


def test_cli_and_deployment(prefect_api, home):
    """`loopline maintenance --json` runs the flow on the session's Prefect API; with
    lake.vacuum_pinned_tables it keeps the clean/D version an MLflow run recorded. prefect.yaml's
    `maintenance` deployment deploys with its daily cron, one run at a time, and a form of optional fields."""
    import mlflow
    from prefect import get_client

    from flows.project import deploy_project
    from flows.stack import create_work_pools
    from tests.cli_support import deploy_env

    lake = Lake(root=str(home / "lake"))
    write_predictions(lake, "parcels")
    clean = lake.uri("clean", "parcels")
    for b in range(16):
        write_deltalake(clean, pa.table({"parcel_id": range(b * 10, b * 10 + 10)}), mode="append")
    recorded = delta.table_version(lake, clean)
    write_deltalake(clean, pa.table({"parcel_id": [1]}), mode="overwrite")
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("loopline-parcels"))
    client.set_tag(run.info.run_id, "loopline.dataset", "parcels")
    client.set_tag(run.info.run_id, "data.clean_version", str(recorded))

    out = run_cli(
        "maintenance", "--dataset", "parcels", "--model", "parcels", "--json",
        "--set", "lake.file_retention_hours=0", "--set", "lake.vacuum_pinned_tables=true",
        "--set", "lake.predictions_retention_days=30000",  # the test rows are from 2026: none expires
        home=home,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    tables = {t["table"]: t for t in result["tables"]}
    assert set(tables) == {"predictions/parcels", "clean/parcels"} and result["failed"] == []
    assert tables["clean/parcels"]["vacuumed"] and tables["clean/parcels"]["files_vacuumed"] == 0
    assert ids_at(lake, clean, recorded) == list(range(160))
    assert (
        tables["predictions/parcels"]["files_after"] == 1
        and tables["predictions/parcels"]["rows_deleted"] == 0
    )

    create_work_pools(prefect_api)
    with get_client(sync_client=True) as prefect:
        assert deploy_project(deploy_env(prefect_api), only=["maintenance"]) == ["maintenance/maintenance"]
        deployment = prefect.read_deployment_by_name("maintenance/maintenance")
        try:
            assert [s.schedule.cron for s in deployment.schedules] == ["30 3 * * *"]
            assert deployment.work_pool_name == "cpu" and deployment.global_concurrency_limit.limit == 1
            fields = deployment.parameter_openapi_schema["properties"]
            assert {"dataset", "model", "dry_run", "config"} <= set(fields)
            assert "dataset" not in deployment.parameter_openapi_schema.get("required", [])
        finally:
            prefect.delete_deployment(deployment.id)
