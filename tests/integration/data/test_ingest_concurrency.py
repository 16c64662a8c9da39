"""Two ingests of overlapping ids that judged their batch from the same snapshot of clean/D: the second to
commit re-checks at commit time, so ids stay unique in clean/D, first arrival wins, the loser's duplicates go
to quarantine with a reason naming the batch that won, and raw = clean + quarantine. (The same
conflict on S3: tests/integration/features/test_features_concurrency.py.)

Deterministic: the second ingest runs to the end inside the first one, where a real race puts it: after the first
one's gate read clean/D, or after its clean commit read the snapshot it commits from (then only the commit's
conflict, its writer app transaction, can catch it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopline.data.validation.gate import Gate
from loopline.storage.lake import Lake
from tests import data_support as ds


@pytest.fixture
def env(home: Path, tmp_path: Path):
    return ds.write_contract(tmp_path), home, tmp_path, Lake(root=str(home / "lake"))


def race(monkeypatch, other, where: str = "gate"):
    """Run `other()` once, inside the next ingest: right after its gate read clean/D ("gate"), or after its
    clean commit read the snapshot it commits from, just before it commits ("commit")."""
    state = {"raced": False}

    def once():
        if not state["raced"]:
            state["raced"] = True
            state["other"] = other()

    if where == "gate":
        finish = Gate.finish
        monkeypatch.setattr(Gate, "finish", lambda self: (once(), finish(self))[1])
    else:
        from loopline.data import clean_commit

        kill_point = clean_commit.kill_point
        monkeypatch.setattr(
            clean_commit,
            "kill_point",
            lambda name: (kill_point(name), name == "ingest.before_clean" and once()),
        )
    return state


@pytest.mark.parametrize("where", ["gate", "commit"])
def test_two_ingests_of_overlapping_ids_from_one_snapshot_keep_ids_unique(env, monkeypatch, where):
    contract_path, home, tmp, lake = env
    ds.ingest(home, contract_path, ds.write_batch(tmp / "base.csv", list(range(1, 11))), lake)
    a = ds.write_batch(tmp / "a.csv", list(range(5, 31)))  # 5..10 are in clean/D already; 20..30 also in b
    b = ds.write_batch(tmp / "b.csv", list(range(20, 41)))
    state = race(monkeypatch, lambda: ds.ingest(home, contract_path, b, lake), where)
    first = ds.ingest(home, contract_path, a, lake)  # b commits while a is between its read and its commit
    second = state["other"]

    assert sorted(ds.clean_ids(lake)) == list(range(1, 41))  # unique, and every id once
    assert second["rows_clean"] == 21 and second["rows_quarantined"] == 0  # b came first
    assert first["rows_in"] == 26 and first["rows_clean"] == 9 and first["rows_quarantined"] == 17
    c = ds.counts(lake)
    assert c["raw"] == c["clean"] + c["quarantine"] == 10 + 26 + 21
    per_clean, per_quarantine = ds.per_batch(lake, "clean"), ds.per_batch(lake, "quarantine")
    assert per_clean.get(first["batch_id"]) == 9 and per_quarantine.get(first["batch_id"]) == 17
    q = ds.table(lake, "quarantine", columns=["customer_id", "_reasons"]).to_pylist()
    moved = [r for r in q if int(r["customer_id"]) >= 20]
    assert len(moved) == 11
    assert all(f"committed first by batch {second['batch_id']}" in r["_reasons"] for r in moved)
    new_id = next(e for e in first["per_expectation"] if e["check"] == "new_id")
    assert new_id["unexpected_count"] == 17

    # the loser's rerun is a no-op
    again = ds.ingest(home, contract_path, a, lake)
    assert again["duplicate_batch"] and again["rows_clean"] == 9
    assert ds.counts(lake) == c


def test_moved_duplicates_count_against_the_quarantine_limit(env, monkeypatch):
    contract_path, home, tmp, lake = env
    strict = tmp / "strict.yaml"
    strict.write_text(
        contract_path.read_text().replace("quarantine_max_fraction: 1.0", "quarantine_max_fraction: 0.2")
    )
    a = ds.write_batch(tmp / "a.csv", list(range(1, 21)))
    b = ds.write_batch(tmp / "b.csv", list(range(11, 31)))  # half of a's ids
    state = race(monkeypatch, lambda: ds.ingest(home, strict, b, lake))
    first = ds.ingest(home, strict, a, lake)
    assert state["other"]["accepted"]
    assert not first["accepted"] and "concurrent ingest committed first" in first["reason"]
    assert sorted(ds.clean_ids(lake)) == list(range(11, 31))
    assert first["batch_id"] not in ds.per_batch(lake, "clean") | ds.per_batch(lake, "quarantine")
