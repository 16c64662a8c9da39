"""The validation gate: coercion, every check kind, duplicates, batch verdicts, and GX agreeing row by row."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.config import SyntheticConfig, ValidationConfig
from loopline.data.contracts import ColumnSpec, load_contract, parse_contract
from loopline.data.synthetic import generate_frame
from loopline.data.validation.coerce import FLOAT_PATTERN, coerce_column
from loopline.data.validation.gate import Gate, clean_dtypes, coerce_chunk
from loopline.errors import DataQualityError

REPO = Path(__file__).resolve().parents[3]
CONTRACT = parse_contract(
    {
        "dataset": "shop",
        "id": "id",
        "label": "y",
        "task": "binary",
        "columns": {
            "id": {"type": "int", "min": 0},
            "qty": {"type": "int", "min": 1, "max": 10},
            "price": {"type": "float", "min": 0, "nullable": True},
            "score": {"type": "float"},
            "flag": {"type": "bool", "nullable": True},
            "kind": {"type": "category", "values": ["a", "b"]},
            "code": {"type": "string", "regex": "^[A-Z]{3}$", "nullable": True},
            "note": {"type": "string", "max_length": 5, "nullable": True},
            "email": {"type": "string", "unique": True, "nullable": True},
            "at": {"type": "timestamp"},
            "y": {"type": "int", "values": [0, 1]},
        },
        "quarantine_max_fraction": 0.5,
    }
)
GOOD = {
    "id": "1",
    "qty": "5",
    "price": "9.5",
    "score": "-0.25",
    "flag": "true",
    "kind": "a",
    "code": "ABC",
    "note": "hi",
    "email": "a@x.org",
    "at": "2024-01-01T00:00:00",
    "y": "1",
}
NO_GX = ValidationConfig(gx_sample_rows=0)


def rows(*overrides: dict, start_id: int = 1) -> pd.DataFrame:
    """Text rows like a reader hands them over: GOOD with per-row overrides, ids counting up."""
    records = []
    for i, over in enumerate(overrides):
        rec = {**GOOD, "id": str(start_id + i), "email": f"u{start_id + i}@x.org", **over}
        records.append(rec)
    return pd.DataFrame(records, columns=CONTRACT.column_names).astype("str")


def reasons_of(verdict) -> list[str]:
    return list(verdict.quarantine["_reasons"])


# -- coercion ------------------------------------------------------------------------------------------------
def coerce(values, type_: str, dtype="object"):
    typed, failed = coerce_column(pd.Series(values, dtype=dtype), ColumnSpec(name="c", type=type_))
    return typed.tolist(), failed.tolist()


def test_int_grammar_accepts_whole_floats_and_refuses_the_rest():
    typed, failed = coerce(
        ["1", " 2 ", "+3", "3.0", "1e3", "3.5", "abc", "0x10", "99999999999999999999", "", None], "int"
    )
    assert typed[:5] == [1, 2, 3, 3, 1000]
    assert failed == [False] * 5 + [True, True, True, True, False, False]
    assert all(v is pd.NA for v in typed[5:])


def test_int_fast_path_refuses_hex_too():
    assert coerce(["1", "0x1F"], "int")[1] == [False, True]


def test_float_inf_parses_and_nan_is_null():
    typed, failed = coerce(["1.5", "inf", "-Infinity", "nan", "", " 2 ", "1,5"], "float")
    assert (
        typed[:3] == [1.5, np.inf, -np.inf] and np.isnan(typed[3]) and np.isnan(typed[4]) and typed[5] == 2.0
    )
    assert failed == [False] * 6 + [True]


def test_bool_and_timestamp_grammars():
    assert coerce(["true", "FALSE", "1", "0", "yes", None], "bool") == (
        [True, False, True, False, pd.NA, pd.NA],
        [False, False, False, False, True, False],
    )
    typed, failed = coerce(
        ["2024-01-01T00:00:00", "2024-01-01 05:00:00+02:00", "2024-01-02", "not-a-date", ""], "timestamp"
    )
    assert typed[:3] == [
        pd.Timestamp("2024-01-01"),
        pd.Timestamp("2024-01-01 03:00"),
        pd.Timestamp("2024-01-02"),
    ]
    assert failed == [False, False, False, True, False]


def test_text_empty_is_null_but_blanks_are_kept():
    assert coerce(["a", "", None, " b "], "string")[0] == ["a", pd.NA, pd.NA, " b "]


def test_typed_input_takes_the_fast_paths():
    assert coerce([1, 2, None], "int", "Int64") == ([1, 2, pd.NA], [False, False, False])
    assert coerce([1.0, 2.5, np.nan], "int", "float64")[1] == [False, True, False]
    typed, failed = coerce(pd.to_datetime(["2024-01-01", None]), "timestamp", None)
    assert typed[0] == pd.Timestamp("2024-01-01") and typed[1] is pd.NaT and failed == [False, False]
    assert coerce(["1", 2, 3.5, None], "string")[0] == ["1", "2", "3.5", pd.NA]


def test_coerce_chunk_types_every_column():
    typed, failures = coerce_chunk(rows({}), CONTRACT)
    assert str(typed["id"].dtype) == "Int64" and str(typed["at"].dtype) == "datetime64[us]"
    assert str(typed["flag"].dtype) == "boolean" and str(typed["kind"].dtype) == "string"
    assert not any(mask.any() for mask in failures.values())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-.eEinfatyINFxX ", min_size=1, max_size=8))
def test_float_verdict_is_the_grammar_whatever_the_chunk(text):
    """The fast path (the column casts cleanly) and the fallback (another value is bad) agree."""
    alone_typed, alone_failed = coerce([text], "float")
    mixed_typed, mixed_failed = coerce([text, "bad"], "float")
    stripped = text.strip()
    expected_ok = stripped == "" or re.fullmatch(FLOAT_PATTERN, stripped) is not None
    assert alone_failed[0] == mixed_failed[0] == (not expected_ok)
    if expected_ok and stripped and stripped.lower().lstrip("+-") != "nan":
        assert alone_typed[0] == mixed_typed[0] == float(stripped)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789+-.exX ", min_size=1, max_size=6))
def test_int_verdict_is_the_same_alone_or_mixed(text):
    alone = coerce([text], "int")
    mixed = coerce([text, "bad"], "int")
    assert alone[1][0] == mixed[1][0]
    assert alone[0][0] is mixed[0][0] or alone[0][0] == mixed[0][0]


# -- checks, one kind at a time --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("qty", "abc", "qty: type int"),
        ("qty", "", "qty: expect_column_values_to_not_be_null"),
        ("qty", "11", "qty: expect_column_values_to_be_between(min_value=1, max_value=10)"),
        ("qty", "0", "qty: expect_column_values_to_be_between(min_value=1, max_value=10)"),
        ("price", "-1", "price: expect_column_values_to_be_between(min_value=0, finite)"),
        ("price", "inf", "price: expect_column_values_to_be_between(min_value=0, finite)"),
        ("score", "-inf", "score: expect_column_values_to_be_between(finite)"),
        ("score", "nan", "score: expect_column_values_to_not_be_null"),
        ("flag", "maybe", "flag: type bool"),
        ("kind", "c", "kind: expect_column_values_to_be_in_set([a, b])"),
        ("code", "abc", "code: expect_column_values_to_match_regex('^[A-Z]{3}$')"),
        ("note", "toolong", "note: expect_column_value_lengths_to_be_between(max_value=5)"),
        ("at", "not-a-date", "at: type timestamp"),
        ("y", "2", "y: expect_column_values_to_be_in_set([0, 1])"),
        ("y", "0.5", "y: type int"),
    ],
)
def test_each_check_quarantines_the_row_that_breaks_it(column, value, reason):
    gate = Gate(CONTRACT, cfg=NO_GX)
    verdict = gate.validate_chunk(rows({}, {column: value}, {}), row_offset=0)
    assert len(verdict.clean) == 2 and len(verdict.quarantine) == 1
    assert reason in reasons_of(verdict)[0].split("; ")
    assert verdict.quarantine["_row"].tolist() == [1]
    assert verdict.quarantine[column].iloc[0] == value  # the value as received


def test_an_arrow_chunk_gets_the_verdict_its_pandas_copy_gets():
    """Ingest hands the gate the Arrow text it read (no pandas copy): clean rows, quarantine, reasons, counts
    and examples are those of the same chunk as a pandas frame, for every kind of bad value."""
    import pyarrow as pa

    bad = [{"qty": "abc"}, {"qty": ""}, {"price": " 2.5 "}, {"price": "inf"}, {"score": "nan"}, {"flag": "x"}]
    bad += [{"kind": "c"}, {"code": "abc"}, {"note": "toolong"}, {"at": "2024-03-01 12:00:00+01:00"}]
    bad += [{"at": "nope"}, {"y": "0.5"}, {"id": "1"}, {"email": ""}, {"qty": "3.0"}]
    frame = rows({}, *bad, {})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in table.schema.types)
    verdicts = []
    for chunk in (frame, table):
        gate = Gate(CONTRACT, cfg=NO_GX)
        verdicts.append((gate.validate_chunk(chunk, row_offset=7), gate))
    (by_pandas, gate_p), (by_arrow, gate_a) = verdicts
    pd.testing.assert_frame_equal(by_arrow.clean, by_pandas.clean)
    pd.testing.assert_frame_equal(by_arrow.quarantine, by_pandas.quarantine)
    assert gate_a._counts == gate_p._counts and gate_a._examples == gate_p._examples
    assert len(by_arrow.quarantine) == 11 and gate_a._examples["at:type"][0] == {"row": 18, "value": "nope"}


def test_a_row_carries_every_reason_and_unparseable_required_values_are_also_null():
    verdict = Gate(CONTRACT, cfg=NO_GX).validate_chunk(
        rows({"qty": "x", "kind": "z", "note": "far too long"}), 0
    )
    assert reasons_of(verdict)[0].split("; ") == [
        "qty: type int",
        "qty: expect_column_values_to_not_be_null",
        "kind: expect_column_values_to_be_in_set([a, b])",
        "note: expect_column_value_lengths_to_be_between(max_value=5)",
    ]


def test_nullable_columns_accept_nulls_and_regex_searches_like_gx():
    verdict = Gate(CONTRACT, cfg=NO_GX).validate_chunk(
        rows({"price": "", "flag": "", "code": "", "note": "", "email": ""}, {"price": "nan"}), 0
    )
    assert len(verdict.clean) == 2


def test_clean_rows_are_typed_per_contract_and_quarantine_keeps_row_numbers():
    gate = Gate(CONTRACT, cfg=NO_GX)
    verdict = gate.validate_chunk(
        rows({}, {"qty": "99"}, {"flag": "0", "at": "2024-03-01 12:00:00+01:00"}), row_offset=1000
    )
    clean = verdict.clean
    assert {c: str(t) for c, t in clean.dtypes.items()} == clean_dtypes(CONTRACT)
    assert clean["qty"].tolist() == [5, 5] and clean["flag"].tolist() == [True, False]
    assert clean["at"].tolist()[1] == pd.Timestamp("2024-03-01 11:00")
    assert verdict.quarantine["_row"].tolist() == [1001]


# -- duplicates --------------------------------------------------------------------------------------------------
def test_duplicate_ids_first_clean_arrival_wins_within_and_across_chunks():
    gate = Gate(CONTRACT, cfg=NO_GX)
    first = gate.validate_chunk(rows({"id": "7"}, {"id": "7"}, {"id": "8", "qty": "0"}, {"id": "8"}), 0)
    # row 2 (id 8) is bad, so it claims nothing: row 3 is the first clean arrival of id 8
    assert first.clean["id"].tolist() == [7, 8]
    assert first.quarantine["_row"].tolist() == [1, 2]
    assert "id: expect_column_values_to_be_unique" in reasons_of(first)[0]
    second = gate.validate_chunk(rows({"id": "7"}, {"id": "9"}, start_id=50), 4)
    assert second.clean["id"].tolist() == [9]
    assert reasons_of(second) == ["id: expect_column_values_to_be_unique"]


def test_ids_already_in_clean_are_quarantined():
    gate = Gate(CONTRACT, existing_ids=np.array([1, 2, 3], dtype=np.int64), cfg=NO_GX)
    verdict = gate.validate_chunk(rows({}, {}, {}, {}), 0)  # ids 1..4
    assert verdict.clean["id"].tolist() == [4]
    assert reasons_of(verdict) == ["id: id already ingested (in clean/shop)"] * 3


def test_other_unique_columns_ignore_nulls():
    verdict = Gate(CONTRACT, cfg=NO_GX).validate_chunk(
        rows({"email": "same"}, {"email": "same"}, {"email": ""}, {"email": ""}), 0
    )
    assert verdict.quarantine["_row"].tolist() == [1]


def test_many_ids_over_many_chunks_stay_exact():
    gate = Gate(CONTRACT, existing_ids=np.arange(0, 10_000, 2), cfg=NO_GX)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20_000, 12_000)
    frame = rows({}).iloc[np.zeros(len(ids), dtype=int)].reset_index(drop=True)
    frame["id"] = ids.astype(str)
    frame["email"] = pd.Series([f"u{i}" for i in range(len(ids))], dtype="str")
    clean_ids = []
    for off in range(0, len(ids), 1000):
        clean_ids += gate.validate_chunk(frame.iloc[off : off + 1000], off).clean["id"].tolist()
    seen: set[int] = set(range(0, 10_000, 2))
    expected = []
    for i in ids.tolist():
        if i not in seen:
            seen.add(i)
            expected.append(i)
    assert clean_ids == expected


# -- the batch ---------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {c: st.sampled_from([GOOD[c], "", "x", "-1", "inf", "2", "AAAAAAA"]) for c in GOOD}
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 7),
)
def test_every_row_is_either_clean_or_quarantined(records, chunk_rows):
    gate = Gate(CONTRACT, cfg=NO_GX)
    frame = pd.DataFrame(records, columns=CONTRACT.column_names).astype("str")
    clean = quarantined = 0
    for off in range(0, len(frame), chunk_rows):
        v = gate.validate_chunk(frame.iloc[off : off + chunk_rows], off)
        clean += len(v.clean)
        quarantined += len(v.quarantine)
        assert all(len(r) > 0 for r in v.quarantine["_reasons"])
        assert not v.clean.isna()[["id", "qty", "score", "kind", "at", "y"]].any().any()
    assert clean + quarantined == len(frame) == gate.rows_in
    assert (gate.rows_clean, gate.rows_quarantined) == (clean, quarantined)


def test_batch_fails_when_too_many_rows_are_bad(tmp_path):
    frame = rows({}, {"qty": "0"}, {"qty": "0"}, {})
    gate = Gate(CONTRACT, cfg=ValidationConfig(data_docs=False), batch_id="b1")  # contract allows 50%
    gate.validate_chunk(frame, 0)
    assert gate.finish().accepted

    gate = Gate(CONTRACT, cfg=ValidationConfig(quarantine_max_fraction=0.25, data_docs=False), batch_id="b2")
    gate.validate_chunk(frame, 0)
    result = gate.finish()
    assert not result.accepted and result.rows_in == result.rows_clean + result.rows_quarantined == 4
    assert "2 of 4 rows (50.00%)" in result.reason and "quarantine_max_fraction 0.25" in result.reason
    assert "qty: expect_column_values_to_be_between" in result.reason


def test_an_empty_batch_is_accepted_without_a_gx_run():
    gate = Gate(CONTRACT, cfg=ValidationConfig(data_docs=False))
    verdict = gate.validate_chunk(rows({}).iloc[:0], 0)
    assert len(verdict.clean) == len(verdict.quarantine) == 0
    result = gate.finish()
    assert (result.rows_in, result.accepted, result.gx_success, result.gx_runs) == (0, True, True, [])
    with pytest.raises(RuntimeError):
        gate.validate_chunk(rows({}), 0)


def test_examples_are_cut_and_counted_per_check():
    gate = Gate(CONTRACT, cfg=ValidationConfig(data_docs=False, bad_row_examples=2))
    gate.validate_chunk(rows({"note": "y" * 500}, {"note": "z" * 6}, {"note": "w" * 7}), 0)
    entry = next(
        e for e in gate.finish().per_expectation if e["column"] == "note" and e["check"] == "max_length"
    )
    assert entry["unexpected_count"] == entry["gx_unexpected_count"] == 3
    assert [e["row"] for e in entry["examples"]] == [0, 1]
    assert len(entry["examples"][0]["value"]) == 80 and entry["examples"][1]["value"] == "zzzzzz"


def test_missing_and_unexpected_columns_fail_the_whole_batch():
    gate = Gate(CONTRACT, cfg=NO_GX)
    gate.check_columns(CONTRACT.column_names, file="ok.csv")
    with pytest.raises(DataQualityError) as err:
        gate.check_columns([c for c in CONTRACT.column_names if c != "qty"] + ["colour"], file="in/x.csv")
    message = str(err.value)
    assert "in/x.csv" in message and "'qty'" in message and "'colour'" in message
    assert err.value.summary == {
        "file": "in/x.csv",
        "missing": ["qty"],
        "unexpected": ["colour"],
        "repeated": [],
    }


def test_synthetic_batch_gx_agrees_with_the_numpy_pass_and_writes_data_docs(tmp_path):
    contract = load_contract(REPO / "contracts" / "demo.yaml")
    frame = generate_frame(SyntheticConfig(rows=2000, bad_fraction=0.05))
    text = frame.astype(object).where(frame.notna(), None).map(lambda v: None if v is None else str(v))
    docs = tmp_path / "data_docs"
    gate = Gate(
        contract,
        existing_ids=np.array([3, 4]),
        cfg=ValidationConfig(quarantine_max_fraction=0.1, gx_sample_rows=300),
        data_docs_dir=str(docs),
        batch_id="batch-1",
    )
    quarantine = []
    for off in range(0, 2000, 700):
        quarantine.append(gate.validate_chunk(text.iloc[off : off + 700], row_offset=off).quarantine)
    result = gate.finish()
    assert result.rows_in == 2000 == result.rows_clean + result.rows_quarantined
    assert result.accepted and not result.gx_success
    # GX saw every rejected row and 300 accepted ones, and failed exactly the rows the numpy pass failed
    # (the gate raises EngineMismatchError otherwise)
    assert result.gx_rows_validated == result.rows_quarantined + 300
    counts = {(e["column"], e["check"]): e for e in result.per_expectation}
    for (column, kind), entry in counts.items():
        if kind not in ("type", "new_id", "unique"):
            assert entry["gx_unexpected_count"] == entry["unexpected_count"], (column, kind)
    for key in [("age", "between"), ("f00", "not_null"), ("f03", "type"), ("f06", "between"), ("segment", "in_set"),
                ("churned", "not_null"), ("churned", "in_set"), ("customer_id", "unique"), ("note", "max_length"),
                ("signup_at", "type"), ("customer_id", "new_id")]:  # fmt: skip
        assert counts[key]["unexpected_count"] > 0, key
        assert counts[key]["examples"], key
    assert counts[("customer_id", "new_id")]["unexpected_count"] == 2
    q = pd.concat(quarantine)
    assert len(q) == result.rows_quarantined and q["_row"].is_unique
    assert Path(result.data_docs_path).is_file() and (docs / "index.html").is_file()
    assert "batch-1" in result.data_docs_path


def test_full_scope_and_small_runs_send_every_row_to_gx():
    frame = rows({}, {"qty": "0"}, {"kind": "q"}, {"score": "inf"}).iloc[np.tile(np.arange(4), 600)]
    frame = frame.reset_index(drop=True)
    frame["id"] = pd.Series(np.arange(len(frame)).astype(str), dtype="str")
    frame["email"] = frame["id"]
    cfg = ValidationConfig(
        gx_scope="full", gx_max_rows_per_run=1000, data_docs=False, quarantine_max_fraction=1
    )
    gate = Gate(CONTRACT, cfg=cfg, batch_id="full")
    for off in range(0, len(frame), 500):
        gate.validate_chunk(frame.iloc[off : off + 500], off)
    result = gate.finish()
    assert result.gx_rows_validated == 2400 and len(result.gx_runs) == 3
    assert result.rows_quarantined == 1800 and result.data_docs_path is None
