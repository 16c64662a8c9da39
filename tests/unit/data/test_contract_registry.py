"""The lake remembers contracts: versions, compatible and incompatible changes, unknown datasets."""

import copy
import threading
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake

from loopline.data.contract_registry import (
    SCHEMA,
    UnknownDatasetError,
    contract_version_of,
    contract_versions,
    contracts_uri,
    diff_contracts,
    known_datasets,
    register_contract,
    require_contract,
)
from loopline.data.contracts import parse_contract
from loopline.errors import ContractError
from loopline.storage import delta
from loopline.storage.lake import Lake

BASE = {
    "dataset": "flowers",
    "id": "flower_id",
    "label": "species",
    "task": "multiclass",
    "columns": {
        "flower_id": {"type": "int"},
        "petal_cm": {"type": "float", "min": 0, "max": 10},
        "colour": {"type": "category", "values": ["red", "blue"]},
        "species": {"type": "category", "values": ["a", "b", "c"]},
    },
}


def _contract(edit=None):
    raw = copy.deepcopy(BASE)
    if edit:
        edit(raw)
    return parse_contract(raw, file="flowers.yaml")


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(root=str(tmp_path / "lake"))


def test_first_registration_is_version_1_and_a_repeat_is_a_no_op(lake):
    first = register_contract(lake, _contract())
    again = register_contract(lake, _contract())
    assert (first.version, again.version) == (1, 1)
    assert len(contract_versions(lake, "flowers")) == 1
    assert require_contract(lake, "flowers").hash == _contract().hash
    assert known_datasets(lake) == ["flowers"]


def test_compatible_changes_make_a_new_version(lake):
    register_contract(lake, _contract())

    def widen(raw):
        raw["columns"]["petal_cm"]["max"] = 20
        raw["columns"]["colour"]["values"].append("white")
        raw["columns"]["stem_cm"] = {"type": "float", "nullable": True}

    v2 = register_contract(lake, _contract(widen))
    assert v2.version == 2 and all(c.compatible for c in v2.changes)
    described = " | ".join(c.what for c in v2.changes)
    assert "'petal_cm': max 10 -> 20 (wider)" in described
    assert "'colour': new values ['white']" in described and "'stem_cm' added (nullable)" in described
    assert require_contract(lake, "flowers").columns["stem_cm"].nullable


def _accept_a_row(lake: Lake) -> None:
    """clean/flowers with one row: a batch was accepted under the registered contract."""
    write_deltalake(lake.table_uri("clean", "flowers"), pa.table({"flower_id": [1]}), mode="append")


def test_incompatible_changes_are_refused_naming_each_unless_allowed(lake):
    register_contract(lake, _contract())
    _accept_a_row(lake)

    def narrow(raw):
        raw["columns"]["petal_cm"]["max"] = 5
        raw["columns"]["colour"]["type"] = "string"
        del raw["columns"]["colour"]["values"]
        raw["columns"]["stem_cm"] = {"type": "float"}

    with pytest.raises(ContractError) as err:
        register_contract(lake, _contract(narrow))
    message = str(err.value)
    assert "max 10 -> 5 (narrower)" in message and "'colour': type category -> string" in message
    assert "'stem_cm' added, not nullable" in message and "flowers.yaml" in message
    assert len(contract_versions(lake, "flowers")) == 1  # nothing registered
    forced = register_contract(lake, _contract(narrow), allow_incompatible=True)
    assert forced.version == 2 and not all(c.compatible for c in forced.changes)


def test_before_any_accepted_batch_a_corrected_contract_just_replaces_it(lake):
    """A first batch rejected because the contract was wrong (a float column typed int) leaves no clean row
    and no model: the corrected contract is the next version, with no --allow-incompatible."""
    register_contract(lake, _contract(lambda raw: raw["columns"]["petal_cm"].update(type="int")))
    fixed = register_contract(lake, _contract())
    assert fixed.version == 2 and "type int -> float" in " | ".join(c.what for c in fixed.changes)
    _accept_a_row(lake)
    with pytest.raises(ContractError, match="type float -> int"):  # from the first accepted batch on: refused
        register_contract(lake, _contract(lambda raw: raw["columns"]["petal_cm"].update(type="int")))


def test_removed_column_and_reordered_classes_are_incompatible():
    def drop(raw):
        del raw["columns"]["colour"]

    def reorder(raw):
        raw["columns"]["species"]["values"] = ["c", "b", "a"]

    assert [c.compatible for c in diff_contracts(_contract(), _contract(drop))] == [False]
    assert [c.compatible for c in diff_contracts(_contract(), _contract(reorder))] == [False]


def test_an_unknown_dataset_names_the_known_ones(lake):
    register_contract(lake, _contract())
    with pytest.raises(UnknownDatasetError, match=r"'irises' is not in the lake .*'flowers'"):
        require_contract(lake, "irises")


def test_the_stored_copy_is_the_contract_as_written(lake):
    register_contract(lake, _contract())
    stored = contract_versions(lake, "flowers")[0].contract
    assert yaml.safe_dump(stored.raw) == yaml.safe_dump(_contract().raw)


def test_version_numbers_are_stored_and_found_by_hash(lake):
    register_contract(lake, _contract())
    wider = _contract(lambda raw: raw["columns"]["petal_cm"].update(max=20))
    register_contract(lake, wider)
    register_contract(lake, _contract(), allow_incompatible=True)  # back to v1's checks: a new version
    stored = delta.open_table(lake, contracts_uri(lake, "flowers")).to_pyarrow_table()
    assert sorted(stored["version"].to_pylist()) == [1, 2, 3]
    assert contract_version_of(lake, "flowers", wider.hash) == 2
    assert contract_version_of(lake, "flowers", _contract().hash) == 3  # the newest with that hash
    assert contract_version_of(lake, "flowers", "0" * 16) is None


def _row(contract, at, version=None) -> dict:
    row = {
        "dataset": "flowers",
        "hash": contract.hash,
        "previous_hash": "",
        "contract_yaml": yaml.safe_dump(contract.raw),
        "changes": "[]",
        "source": "",
        "registered_at": at,
    }
    return row if version is None else {**row, "version": version}


def test_rows_from_before_the_version_column_are_numbered_by_time_and_numbering_continues(lake):
    from datetime import UTC, datetime, timedelta

    old_schema = pa.schema([f for f in SCHEMA if f.name != "version"])
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    wider = _contract(lambda raw: raw["columns"]["petal_cm"].update(max=20))
    rows = [_row(wider, t0 + timedelta(days=1)), _row(_contract(), t0)]  # stored out of order
    write_deltalake(contracts_uri(lake, "flowers"), pa.Table.from_pylist(rows, schema=old_schema))
    assert [(v.version, v.hash) for v in contract_versions(lake, "flowers")] == [
        (1, _contract().hash),
        (2, wider.hash),
    ]
    third = register_contract(lake, _contract(lambda raw: raw["columns"]["petal_cm"].update(max=30)))
    assert third.version == 3 and [v.version for v in contract_versions(lake, "flowers")] == [1, 2, 3]


def test_two_rows_with_one_number_read_as_one_version_the_earliest(lake):
    """What a store without atomic commits could leave behind: readers agree on one row per number."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    wider = _contract(lambda raw: raw["columns"]["petal_cm"].update(max=20))
    rows = [_row(wider, t0 + timedelta(seconds=1), 1), _row(_contract(), t0, 1)]
    write_deltalake(contracts_uri(lake, "flowers"), pa.Table.from_pylist(rows, schema=SCHEMA))
    assert [(v.version, v.hash) for v in contract_versions(lake, "flowers")] == [(1, _contract().hash)]
    assert register_contract(lake, wider).version == 2  # the hidden row does not count as registered


def test_two_different_contracts_registered_at_once_become_consecutive_versions(lake):
    """The registration that loses the race is judged against the winner, not against the version both
    started from (allowed here, since either order makes the second one undo the first one's change)."""
    register_contract(lake, _contract())
    wider = _contract(lambda raw: raw["columns"]["petal_cm"].update(max=20))
    white = _contract(lambda raw: raw["columns"]["colour"]["values"].append("white"))
    barrier, results = threading.Barrier(2), {}

    def register(contract):
        barrier.wait()
        results[contract.hash] = register_contract(lake, contract, allow_incompatible=True).version

    threads = [threading.Thread(target=register, args=(c,)) for c in (wider, white)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [2, 3]
    first, second, third = contract_versions(lake, "flowers")
    assert {second.hash, third.hash} == {wider.hash, white.hash}
    assert third.changes == tuple(diff_contracts(second.contract, third.contract))
    assert not all(c.compatible for c in third.changes)  # it undoes the winner's change
