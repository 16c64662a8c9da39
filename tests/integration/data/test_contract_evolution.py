"""A dataset's contract changes on a real Delta lake: a compatible change becomes a new version and the
features follow it; an incompatible one is refused naming each change with nothing committed, or, asked
for explicitly, becomes a version too: clean/D takes the new type, the next features build refits on its
own and the model trained on it records the contract version. Concurrent registrations land once."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from loopline.config import LifecycleConfig
from loopline.data.contract_registry import (
    contract_versions,
    contracts_uri,
    latest_contract,
    register_contract,
)
from loopline.data.contracts import load_contract, parse_contract
from loopline.data.ingest import ingest_source
from loopline.errors import ContractError
from loopline.features import build_features, read_split, refit_reason
from loopline.storage import delta
from loopline.storage.lake import Lake
from loopline.train.inputs import read_raw_rows

pytestmark = pytest.mark.integration

V1 = {
    "dataset": "rentals",
    "id": "listing_id",
    "label": "booked",
    "task": "binary",
    "columns": {
        "listing_id": {"type": "int"},
        "rooms": {"type": "int", "min": 1, "max": 10},
        "price": {"type": "float", "min": 0, "max": 1000},
        "district": {"type": "category", "values": ["north", "south"]},
        "booked": {"type": "category", "values": ["no", "yes"]},
    },
    "quarantine_max_fraction": 0.2,
}


def v2() -> dict:
    """Compatible: a new nullable column, a wider range, a new category."""
    raw = copy.deepcopy(V1)
    raw["columns"]["garden_m2"] = {"type": "float", "nullable": True}
    raw["columns"]["price"]["max"] = 5000
    raw["columns"]["district"]["values"].append("east")
    return raw


def v3() -> dict:
    """Incompatible: a type change, a removed column, a narrower range."""
    raw = v2()
    raw["columns"]["rooms"] = {"type": "float", "min": 1, "max": 10}
    del raw["columns"]["district"]
    raw["columns"]["price"]["max"] = 3000
    return raw


def write_contract(tmp: Path, raw: dict, name: str):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_contract(path)


def write_batch(tmp: Path, name: str, start: int, n: int, *, version: int) -> Path:
    """n rows under contract `version` (1, 2 or 3), ids from `start`; the label follows rooms and price."""
    rng = np.random.default_rng(start)
    header = {
        1: "listing_id,rooms,price,district,booked",
        2: "listing_id,rooms,price,district,garden_m2,booked",
        3: "listing_id,rooms,price,garden_m2,booked",
    }[version]
    lines = [header]
    for i in range(start, start + n):
        rooms = int(rng.integers(1, 11))
        price = float(rng.uniform(0, 1000 if version == 1 else 2500))
        booked = "yes" if rooms * 100 > price else "no"
        district = ["north", "south", "east"][i % (2 if version == 1 else 3)]
        garden = "" if i % 4 == 0 else f"{rng.uniform(0, 50):.1f}"
        if version == 1:
            lines.append(f"{i},{rooms},{price:.2f},{district},{booked}")
        elif version == 2:
            lines.append(f"{i},{rooms},{price:.2f},{district},{garden},{booked}")
        else:
            lines.append(f"{i},{i % 9 + 1 + (0.5 if i % 2 else 0)},{price:.2f},{garden},{booked}")
    path = tmp / "src" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def ingest(env, name: str, start: int, raw: dict, version: int, n: int = 300):
    cfg, lake, tmp = env
    return ingest_source(
        str(write_batch(tmp, name, start, n, version=version)), write_contract(tmp, raw, name), lake, cfg
    )[0]


def build(env) -> dict:
    """`loopline features`: the lake's latest contract of the dataset (as tasks/features.py passes it)."""
    cfg, lake, _ = env
    return build_features(lake, latest_contract(lake, "rentals").contract, cfg.features)


def table_versions(lake: Lake) -> dict[str, int | None]:
    return {
        kind: delta.table_version(lake, lake.table_uri(kind, "rentals"))
        for kind in ("raw", "clean", "quarantine")
    }


@pytest.fixture
def env(home: Path, tmp_path: Path):
    cfg = LifecycleConfig(
        home=str(home),
        validation={"data_docs": False},
        training={
            "max_steps": 10,
            "hidden_sizes": [8],
            "batch_size": 64,
            "eval_every_steps": 5,
            "checkpoint_every_steps": 10,
        },
    )
    return cfg, Lake.from_env(str(home)), tmp_path


def test_contract_changes_compatible_refused_then_allowed_refit_and_train(env, monkeypatch):
    cfg, lake, tmp = env

    # v1: the first ingest registers the dataset's own contract
    first = ingest(env, "b1", 0, V1, version=1)
    assert first.accepted and first.contract_version == 1
    built1 = build(env)
    assert built1["rows_added"] == 300 and built1["contract_version"] == 1 and built1["refit_reason"] is None

    # v2, compatible: a new version, the batch is accepted, clean/D gains the column (null in batch 1)
    second = ingest(env, "b2", 1000, v2(), version=2)
    assert second.accepted and second.rows_quarantined == 0 and second.contract_version == 2
    assert all(c.compatible for c in contract_versions(lake, "rentals")[-1].changes)
    built2 = build(env)
    # the transform follows the contract: refit over both batches, the new column and category are features
    assert built2["refit"] and built2["rows_added"] == 600 and built2["contract_version"] == 2
    assert "v1 (" in built2["refit_reason"] and "changed compatibly" in built2["refit_reason"]
    assert "'garden_m2' added (nullable)" in built2["refit_reason"]
    train = read_split(lake, "rentals", "train")
    assert "garden_m2" in train.feature_names and "district__east" in train.feature_names
    assert np.isfinite(train.X).all() and min(train.ids) < 300 and max(train.ids) >= 1000
    raw = read_raw_rows(lake, train.contract, built2["clean_version"], limit=1000)
    assert len(raw) == 600 and raw.loc[raw["listing_id"] < 300, "garden_m2"].isna().all()
    assert build(env)["refit_reason"] is None  # nothing changed since: incremental again

    # v3, incompatible: refused naming each change; nothing lands, the lake keeps v2
    before = table_versions(lake)
    c3 = write_contract(tmp, v3(), "v3")
    with pytest.raises(ContractError) as refused:
        ingest_source(str(write_batch(tmp, "b3", 2000, 300, version=3)), c3, lake, cfg)
    message = str(refused.value)
    assert "'rooms': type int -> float" in message and "'district' removed" in message
    assert "'price': max 5000 -> 3000 (narrower)" in message and "--allow-incompatible" in message
    assert table_versions(lake) == before and latest_contract(lake, "rentals").version == 2

    # asked for explicitly: v3; clean/D's rooms becomes float (2.5 stays 2.5)
    cfg.data.allow_incompatible_contract = True
    third = ingest(env, "b3", 2000, v3(), version=3)
    assert third.accepted and third.contract_version == 3
    clean = delta.open_table(lake, lake.table_uri("clean", "rentals")).to_pyarrow_dataset()
    assert str(clean.schema.field("rooms").type) == "double" and clean.count_rows() == 900
    rooms = clean.to_table(columns=["rooms", "listing_id"]).to_pandas().set_index("listing_id")["rooms"]
    assert (rooms.loc[2001] % 1) == 0.5 and (rooms.loc[rooms.index < 2000] % 1 == 0).all()

    # the next features build refits on its own: a new transform version, the old ones by time travel
    built3 = build(env)
    assert built3["refit"] and built3["rows_added"] == 900 and built3["contract_version"] == 3
    assert built3["transform_version"] != built2["transform_version"]
    assert "changed incompatibly" in built3["refit_reason"] and "'district' removed" in built3["refit_reason"]
    assert (
        read_split(lake, "rentals", "train", built2["features_version"]).transform_version
        == built2["transform_version"]
    )
    assert not any(n.startswith("district") for n in read_split(lake, "rentals", "train").feature_names)

    # training on it records the contract version, and the model card of its evaluation shows it
    from mlflow import MlflowClient

    from loopline.packaging.model_card import render_model_card
    from loopline.release.scoring import evaluate_versions
    from loopline.train import run_training

    monkeypatch.setenv("LOOPLINE_CODE_VERSION", "test-code")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = run_training(cfg, "rentals", lake=lake)
    finally:
        torch.set_num_threads(threads)
    tags = MlflowClient().get_run(trained["run_id"]).data.tags
    assert tags["contract.version"] == "3" and tags["contract.hash"] == c3.hash
    assert (
        trained["features_version"] == built3["features_version"]
        and trained["reference_profile"] == "written"
    )
    evaluated = evaluate_versions(cfg, "rentals", lake=lake, champion_version=None)
    assert evaluated["data"]["contract_version"] == 3
    assert f"| v3 (`{c3.hash}`) |" in render_model_card(evaluated)
    # a model registered before training tagged the version: its card shows the hash alone
    untagged = {**evaluated, "data": {k: v for k, v in evaluated["data"].items() if k != "contract_version"}}
    assert f"| `{c3.hash}` |" in render_model_card(untagged)


def test_a_version_whose_batch_was_rejected_still_refits_over_a_column_clean_does_not_hold(env):
    """v2 is registered by an ingest whose batch is then rejected: clean/D never gets v2's new column. The
    refit on v2 and training's raw rows read that column as null."""
    cfg, lake, tmp = env
    ingest(env, "b1", 0, V1, version=1, n=200)
    assert build(env)["contract_version"] == 1
    source = write_batch(tmp, "b2", 1000, 90, version=2)
    source.write_text(source.read_text().replace(",north,", ",west,"))  # a third of the rows: over 20%
    rejected = ingest_source(str(source), write_contract(tmp, v2(), "v2"), lake, cfg)[0]
    assert not rejected.accepted and latest_contract(lake, "rentals").version == 2
    built = build(env)
    assert built["refit_reason"].startswith("contract v1 (") and built["contract_version"] == 2
    split = read_split(lake, "rentals", "train")
    assert "garden_m2" in split.feature_names and np.isfinite(split.X).all()
    raw = read_raw_rows(lake, split.contract, built["clean_version"], limit=500)
    assert len(raw) == 200 and raw["garden_m2"].isna().all()


def test_an_allowed_type_change_that_old_rows_cannot_take_is_refused_before_any_commit(env):
    """float -> int with 2.5 already in clean/D: even asked for, nothing lands and the lake keeps v1."""
    cfg, lake, tmp = env
    as_float = copy.deepcopy(V1)
    as_float["columns"]["rooms"] = {"type": "float", "min": 1, "max": 10}
    source = tmp / "src" / "halves.csv"
    source.parent.mkdir(parents=True)
    rows = [f"{i},{1 + i % 9 + 0.5 * (i % 2)},{10.0 * i},north,{'yes' if i % 2 else 'no'}" for i in range(20)]
    source.write_text("\n".join(["listing_id,rooms,price,district,booked", *rows]) + "\n")
    assert ingest_source(str(source), write_contract(tmp, as_float, "floats"), lake, cfg)[0].accepted
    before = table_versions(lake)
    cfg.data.allow_incompatible_contract = True
    with pytest.raises(ContractError, match=r"column 'rooms' becomes int, but clean/rentals holds values"):
        ingest(env, "b2", 3000, V1, version=1, n=20)
    assert table_versions(lake) == before and latest_contract(lake, "rentals").version == 1


def test_what_makes_the_features_refit(tmp_path):
    """Changes only the ingest gate reads keep the transform; any change to what features or serving read
    refits it (the policy in loopline/features/table.py)."""
    lake = Lake(root=str(tmp_path / "lake"))

    def contract(edit=None):
        raw = copy.deepcopy(V1)
        if edit:
            edit(raw)
        return parse_contract(raw)

    base = contract()
    assert refit_reason(lake, base, contract(lambda r: r.update(quarantine_max_fraction=0.5))) is None
    assert refit_reason(lake, base, contract(lambda r: r.update(description="rentals, by listing"))) is None
    relaxed = refit_reason(lake, base, contract(lambda r: r["columns"]["price"].update(max=2000)))
    assert relaxed and "max 1000 -> 2000 (wider)" in relaxed and "compatibly" in relaxed
    narrowed = refit_reason(lake, base, contract(lambda r: r["columns"]["price"].update(max=500)))
    assert narrowed and "incompatibly: column 'price': max 1000 -> 500 (narrower)" in narrowed


def test_two_threads_registering_the_same_contract_make_one_version(tmp_path):
    """First the race to create contracts/D (no table yet), then a race on the existing table."""
    lake = Lake(root=str(tmp_path / "lake"))
    for step, raw in enumerate((V1, v2())):
        contract = parse_contract(copy.deepcopy(raw), file="rentals.yaml")
        barrier, results, errors = threading.Barrier(2), [], []

        def register(contract=contract, barrier=barrier, results=results, errors=errors):
            barrier.wait()
            try:
                results.append(register_contract(lake, contract))
            except Exception as exc:  # asserted below
                errors.append(exc)

        threads = [threading.Thread(target=register) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and [r.version for r in results] == [step + 1, step + 1]
        stored = delta.open_table(lake, contracts_uri(lake, "rentals")).to_pyarrow_table()
        assert stored.num_rows == step + 1  # no duplicate row, not even one hidden by the readers
        assert [v.hash for v in contract_versions(lake, "rentals")] == [
            parse_contract(copy.deepcopy(r)).hash for r in (V1, v2())[: step + 1]
        ]
