"""Two features builds from the same snapshot of features/D, each seeing a different set of clean batches: each
clean batch lands in features/D exactly once (the later commit conflicts, re-reads and appends only what is
still missing), on a first build too (locally and on S3, moto: the conflict rests on the store's put-if-absent),
and a refit racing an append leaves every batch once.

Deterministic: the second build (after one more batch is ingested) runs to the end inside the first one, after
the first read its snapshots and before it commits (where a real race puts it)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from loopline.features import table
from loopline.storage.lake import Lake
from tests import data_support as ds


@pytest.fixture
def env(home: Path, tmp_path: Path):
    return ds.write_contract(tmp_path), home, tmp_path, Lake(root=str(home / "lake"))


@pytest.fixture
def s3_env(env, moto_s3):
    return (*env[:3], ds.s3_lake(moto_s3, f"race-{uuid.uuid4().hex[:12]}"))


def race_before_commit(monkeypatch, other):
    """Run `other()` once, inside the next build, after it read its snapshots and before its commit."""
    real, state = table.save_transform, {"raced": False}

    def save_then_other(*args, **kwargs):
        out = real(*args, **kwargs)
        if not state["raced"]:
            state["raced"] = True
            state["other"] = other()
        return out

    monkeypatch.setattr(table, "save_transform", save_then_other)
    return state


# the first build creates features/D: the one commit delta-rs does not check for app ids on its own
@pytest.mark.parametrize(
    "first_build, where",
    [(False, "local"), (True, "local"), (True, "s3")],
    ids=["append", "first", "first-s3"],
)
def test_two_builds_from_one_snapshot_with_different_batches_never_double_a_batch(
    request, monkeypatch, first_build, where
):
    contract_path, home, tmp, lake = request.getfixturevalue("s3_env" if where == "s3" else "env")
    ds.ingest(home, contract_path, ds.write_batch(tmp / "a.csv", list(range(1, 41))), lake)
    if not first_build:
        ds.build(home, contract_path, lake)  # features/D holds batch a
    ds.ingest(home, contract_path, ds.write_batch(tmp / "b.csv", list(range(41, 81))), lake)

    def other():  # batch c lands, and another build sees a, b and c
        ds.ingest(home, contract_path, ds.write_batch(tmp / "c.csv", list(range(81, 121))), lake)
        return ds.build(home, contract_path, lake)

    state = race_before_commit(monkeypatch, other)
    first = ds.build(home, contract_path, lake)  # saw b (and a) only; commits after the other build did
    doubled, lost = ds.features_doubled(lake)
    assert (doubled, lost) == (0, 0)
    assert ds.per_batch(lake, "features") == ds.per_batch(lake, "clean")
    assert state["other"]["new_batches"] == (3 if first_build else 2)
    assert first["new_batches"] == 0 and first["rows_added"] == 0  # everything it saw was there already


def test_a_refit_racing_an_append_leaves_every_batch_once(env, monkeypatch):
    contract_path, home, tmp, lake = env
    contract, _, cfg = ds.setup(home, contract_path)
    ds.ingest(home, contract_path, ds.write_batch(tmp / "a.csv", list(range(1, 41))))
    ds.build(home, contract_path)

    def other():  # batch b lands and an incremental build appends it
        ds.ingest(home, contract_path, ds.write_batch(tmp / "b.csv", list(range(41, 81))))
        return ds.build(home, contract_path)

    state = race_before_commit(monkeypatch, other)
    refit = table.build_features(
        lake, contract, cfg.features.model_copy(update={"numeric": "log1p"}), refit=True
    )
    assert state["other"]["new_batches"] == 1
    assert (ds.features_doubled(lake)) == (0, 0)
    assert refit["rows_added"] == 80  # the refit retried on the new snapshot: it rewrote a and b
    transforms = ds.table(lake, "features", columns=["_transform"])["_transform"].unique().to_pylist()
    assert transforms == [refit["transform_version"]]
