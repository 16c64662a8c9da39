"""The compile step: contract -> checks -> a GX suite and a numpy pass that fail exactly the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopline.config import SyntheticConfig
from loopline.data.contracts import load_contract, parse_contract
from loopline.data.synthetic import generate_frame
from loopline.data.validation.gate import coerce_chunk
from loopline.data.validation.gx import EngineMismatchError, GxValidator, cross_check, evaluate, to_gx_frame
from loopline.data.validation.suite import MAX_FLOAT, build_suite, compile_checks, gx_checks
from loopline.errors import ContractError

REPO = Path(__file__).resolve().parents[3]
DEMO = load_contract(REPO / "contracts" / "demo.yaml")

EDGE = parse_contract(
    {
        "dataset": "edge",
        "id": "id",
        "label": "y",
        "task": "binary",
        "columns": {
            "id": {"type": "int"},
            "n": {"type": "int", "min": 0, "max": 5, "nullable": True},
            "x": {"type": "float", "min": -1, "nullable": True},
            "flag": {"type": "bool", "values": [True], "nullable": True},
            "code": {"type": "string", "regex": "^[a-z]+$", "max_length": 3, "nullable": True},
            "tag": {"type": "string", "max_length": 1, "unique": True, "nullable": True},
            "at": {"type": "timestamp", "nullable": True},
            "y": {"type": "int", "values": ["0", 1]},
        },
    }
)
# every violation kind, and nulls wherever GX's null handling could differ (lengths and regex on nulls ...)
EDGE_FRAME = pd.DataFrame(
    {
        "id": ["1", "1", "2", "3", "4", "5", None],
        "n": ["0", None, "6", "-1", "5", "x", "3"],
        "x": ["-1", "inf", None, "-1.5", "nan", "-inf", "2"],
        "flag": ["true", "false", None, "1", "0", "true", "yes"],
        "code": ["ab", "abcd", None, "AB", "", "a1", "abc"],
        "tag": ["a", "a", None, None, "bb", "c", "d"],
        "at": ["2024-01-01", None, "x", "2024-01-02T00:00:00Z", "2024-01-03", "2024-01-04", "2024-01-05"],
        "y": ["0", "1", "2", None, "1", "0", "1"],
    },
    dtype="str",
)


@pytest.fixture(scope="module")
def validator():
    return GxValidator(EDGE, compile_checks(EDGE))


def test_demo_contract_compiles_to_one_check_per_rule():
    checks = compile_checks(DEMO)
    by_key = {c.key: c for c in checks}
    assert by_key["age:between"].params == {"min_value": 18, "max_value": 100}
    assert by_key["f02:between"].params == {"min_value": -MAX_FLOAT, "max_value": MAX_FLOAT}  # finite
    assert by_key["f01:between"].params == {"min_value": -50.0, "max_value": 50.0}
    assert "f01:not_null" not in by_key and "f00:not_null" in by_key
    assert by_key["churned:in_set"].params["value_set"] == (0, 1)
    assert {"customer_id:unique", "customer_id:new_id", "note:max_length", "segment:in_set"} <= set(by_key)
    assert "note:type" not in by_key and by_key["signup_at:type"].expectation_type is None
    assert (
        by_key["age:between"].label == "age: expect_column_values_to_be_between(min_value=18, max_value=100)"
    )
    suite = build_suite(DEMO, checks)
    assert len(suite.expectations) == len(gx_checks(checks)) == 64
    assert suite.name == f"demo-{DEMO.hash}"
    assert all(e.meta["loopline_key"] for e in suite.expectations)


def test_values_are_normalised_to_the_column_type():
    checks = {c.key: c for c in compile_checks(EDGE)}
    assert checks["y:in_set"].params["value_set"] == (0, 1)
    bad = {**EDGE.raw, "columns": {**EDGE.raw["columns"], "y": {"type": "int", "values": [0, 1.5]}}}
    with pytest.raises(ContractError, match=r"1\.5"):
        compile_checks(parse_contract(bad))
    stamp = {
        **EDGE.raw,
        "columns": {**EDGE.raw["columns"], "at": {"type": "timestamp", "values": ["2024-01-01"]}},
    }
    with pytest.raises(ContractError, match="timestamp"):
        compile_checks(parse_contract(stamp))


def test_gx_and_numpy_fail_the_same_rows_on_every_edge(validator):
    typed, _ = coerce_chunk(EDGE_FRAME, EDGE)
    frame = to_gx_frame(typed.set_axis(pd.Index(np.arange(100, 107))))
    run = validator.run(frame, "edge")
    masks = cross_check(run, frame, validator.checks)
    expected = {
        "id:not_null": [106],
        "id:unique": [100, 101],
        "n:between": [102, 103],
        "x:between": [101, 103, 105],
        "flag:in_set": [101, 104],
        "code:regex": [103, 105],
        "code:max_length": [101],
        "tag:max_length": [104],
        "tag:unique": [100, 101],
        "y:not_null": [103],
        "y:in_set": [102],
    }
    found = {key: frame.index[mask].tolist() for key, mask in masks.items() if mask.any()}
    assert found == expected
    assert run.unexpected_counts == {c.key: len(expected.get(c.key, [])) for c in validator.checks}
    assert not run.success


def test_gx_and_numpy_agree_on_the_synthetic_frame_with_every_violation_kind():
    frame = generate_frame(SyntheticConfig(rows=2000, bad_fraction=0.05))
    text = frame.astype(object).where(frame.notna(), None).map(lambda v: None if v is None else str(v))
    typed, failures = coerce_chunk(text, DEMO)
    gx_frame = to_gx_frame(typed)
    validator = GxValidator(DEMO, compile_checks(DEMO))
    run = validator.run(gx_frame, "synthetic")
    masks = cross_check(run, gx_frame, validator.checks)
    failing = {key for key, mask in masks.items() if mask.any()}
    assert {"age:between", "f00:not_null", "f03:not_null", "f06:between", "segment:in_set", "churned:in_set",
            "churned:not_null", "customer_id:unique", "note:max_length", "signup_at:not_null"} <= failing  # fmt: skip
    assert failures["f03"].sum() == 10 and failures["signup_at"].sum() == 10


def test_cross_check_raises_when_the_engines_disagree(validator):
    typed, _ = coerce_chunk(EDGE_FRAME, EDGE)
    frame = to_gx_frame(typed)
    run = validator.run(frame, "edge")
    run.unexpected["n:between"] = run.unexpected["n:between"][:1]
    with pytest.raises(EngineMismatchError, match="n: expect_column_values_to_be_between"):
        cross_check(run, frame, validator.checks)


def test_gx_frame_uses_fast_dtypes_without_changing_values():
    typed, _ = coerce_chunk(EDGE_FRAME, EDGE)
    frame = to_gx_frame(typed)
    assert str(frame["n"].dtype) == "float64" and str(frame["flag"].dtype) == "boolean"
    full = to_gx_frame(typed.iloc[:1])
    assert str(full["id"].dtype) == "int64" and str(full["flag"].dtype) == "bool"
    for key, mask in evaluate(frame, compile_checks(EDGE)).items():
        assert (mask == evaluate(typed, compile_checks(EDGE))[key]).all(), key


def test_data_docs_keep_every_batch_in_the_index(tmp_path):
    docs = tmp_path / "docs"
    typed, _ = coerce_chunk(EDGE_FRAME, EDGE)
    pages = []
    for batch in ("batch-abc", "batch-def"):  # one context per batch, as one gate per batch
        validator = GxValidator(EDGE, compile_checks(EDGE), data_docs_dir=str(docs))
        pages.append(validator.run(to_gx_frame(typed), batch).data_docs_page)
    assert all(Path(p).is_file() for p in pages) and "batch-abc" in pages[0] and "batch-def" in pages[1]
    index = (docs / "index.html").read_text()
    assert "batch-abc" in index and "batch-def" in index
    assert validator.index_page() == str(docs / "index.html")


def test_the_data_docs_index_lists_the_newest_runs_and_older_pages_stay(tmp_path):
    docs = tmp_path / "docs"
    typed, _ = coerce_chunk(EDGE_FRAME, EDGE)
    pages = []
    for batch in ("batch-old", "batch-mid", "batch-new"):
        validator = GxValidator(EDGE, compile_checks(EDGE), data_docs_dir=str(docs), index_runs=2)
        pages.append(validator.run(to_gx_frame(typed), batch).data_docs_page)
    index = (docs / "index.html").read_text()
    assert "batch-new" in index and "batch-mid" in index and "batch-old" not in index
    assert all(Path(p).is_file() for p in pages)  # the oldest batch's page is still there
