from pathlib import Path

import pytest
import yaml

from loopline.data.contracts import load_contract
from loopline.errors import ContractError
from tests.datasets import CREDIT

REPO = Path(__file__).resolve().parents[3]
GOOD = CREDIT


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def mutate(path: list[str], value):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def test_demo_contract_has_what_the_demo_needs():
    c = load_contract(REPO / "contracts" / "demo.yaml")
    types = [s.type for s in c.columns.values()]
    assert sum(t in ("int", "float") for t in types) >= 31  # id, age, f00..f29, label
    assert types.count("category") >= 3 and types.count("timestamp") >= 1
    assert c.task == "binary" and c.columns[c.id].unique


def test_good_contract_parses_and_hash_ignores_key_order(tmp_path):
    c = load_contract(write(tmp_path, GOOD))
    assert c.dataset == "credit" and c.label == "default" and c.columns["age"].max == 120
    reordered = dict(reversed(list(GOOD.items())))
    assert load_contract(write(tmp_path, reordered)).hash == c.hash
    assert load_contract(write(tmp_path, mutate(["quarantine_max_fraction"], 0.1))).hash != c.hash


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (["columns", "age", "type"], "integer", "columns.age.type"),
        (["columns", "age", "min"], 200, "columns.age.min"),
        (["label"], "nope", "label"),
        (["id"], "nope", "id"),
        (["task"], "ranking", "task"),
        (["columns", "segment", "values"], KeyError, "columns.segment.values"),
        (["columns", "age", "colour"], "red", "columns.age.colour"),
        (["quarantine_max_fraction"], 2, "quarantine_max_fraction"),
        (["columns", "note", "regex"], "([", "columns.note.regex"),
        (["columns", "default", "values"], [0, 1, 2], "columns.default.values"),
        (["dataset"], KeyError, "dataset"),
    ],
)
def test_bad_contract_names_file_and_key(tmp_path, path, value, key):
    p = write(tmp_path, mutate(path, value))
    with pytest.raises(ContractError) as err:
        load_contract(p)
    assert err.value.key == key
    assert str(p) in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ContractError, match="not valid YAML"):
        load_contract(write(tmp_path, "dataset: [unclosed"))
    with pytest.raises(ContractError, match="does not exist"):
        load_contract(tmp_path / "missing.yaml")
