"""The lake remembers contracts: versions, compatible and incompatible changes, unknown datasets."""

import copy
from pathlib import Path

import pytest
import yaml

from loopline.data.contract_registry import (
    UnknownDatasetError,
    contract_versions,
    diff_contracts,
    known_datasets,
    register_contract,
    require_contract,
)
from loopline.data.contracts import parse_contract
from loopline.errors import ContractError
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


def test_incompatible_changes_are_refused_naming_each_unless_allowed(lake):
    register_contract(lake, _contract())

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
