"""Request columns are checked against the contract: every failure is a 422 naming the field and rows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopline.data.contracts import load_contract, parse_contract
from loopline.serving.inputs import InputChecker, concat_rows, to_frame
from loopline.serving.protocol import Columns, RequestError
from tests.serving_support import DEMO_CONTRACT, demo_rows

CONTRACT = parse_contract(
    {
        "dataset": "t",
        "id": "id",
        "label": "y",
        "task": "binary",
        "columns": {
            "id": {"type": "int"},
            "n": {"type": "int", "min": 0, "max": 10},
            "x": {"type": "float", "min": -1.5, "max": 1.5},
            "z": {"type": "float", "nullable": True},
            "flag": {"type": "bool", "nullable": True},
            "cat": {"type": "category", "values": ["a", "b"]},
            "code": {"type": "string", "regex": "^[A-Z]{2}$", "max_length": 2, "nullable": True},
            "at": {"type": "timestamp"},
            "y": {"type": "int", "values": [0, 1]},
        },
    }
)
GOOD = {
    "n": [0, 10],
    "x": [1.5, -1],
    "z": [None, 2.5],
    "flag": [True, None],
    "cat": ["a", "b"],
    "code": ["AB", None],
    "at": ["2024-01-02T03:04:05", "2024-06-30T23:59:59+02:00"],
}


def check(data, contract=CONTRACT):
    n = len(next(iter(data.values()))) if data else 0
    return InputChecker(contract).check(Columns(data, n, "test"))


def problems(data) -> dict[str, list[str]]:
    with pytest.raises(RequestError) as info:
        check(data)
    assert info.value.status == 422
    out: dict[str, list[str]] = {}
    for f in info.value.fields:
        out.setdefault(f["field"], []).append(f["error"])
    return out


def test_good_rows_are_typed_per_contract():
    rows = check(GOOD)
    c = rows.columns
    assert rows.n_rows == 2
    assert c["n"].values.dtype == np.int64 and c["n"].values.tolist() == [0, 10]
    assert c["x"].values.dtype == np.float64
    assert np.isnan(c["z"].values[0]) and c["z"].mask.tolist() == [True, False]
    assert c["flag"].mask.tolist() == [False, True]
    assert c["cat"].values.tolist() == ["a", "b"]
    # an offset is converted to UTC; a naive value is taken as UTC (the ingest grammar)
    assert c["at"].values.astype("datetime64[s]").astype(str).tolist() == [
        "2024-01-02T03:04:05",
        "2024-06-30T21:59:59",
    ]
    # the id is always present (null when the client did not send it); the label never is
    assert c["id"].mask.all() and "y" not in c


def test_whole_floats_are_ints_and_a_label_may_come_along():
    rows = check({**GOOD, "n": [3.0, 4], "y": [0, 1], "id": [7, 8]})
    assert rows.columns["n"].values.tolist() == [3, 4]
    assert rows.columns["id"].values.tolist() == [7, 8]


@pytest.mark.parametrize(
    "change, field, needle",
    [
        ({"n": [1, 11]}, "n", "above the maximum"),
        ({"n": [-1, 1]}, "n", "below the minimum"),
        ({"n": [1.5, 1]}, "n", "whole number"),
        ({"n": [True, 1]}, "n", "expected a number"),
        ({"n": ["1", 1]}, "n", "expected a number"),
        ({"n": [2**70, 1]}, "n", "out of range"),
        ({"x": [None, 1.0]}, "x", "null in a non-nullable column"),
        ({"x": [1e308 * 10 if False else 1e300, 0.0]}, "x", "above the maximum"),
        ({"x": [[1], 0.0]}, "x", "expected a number"),
        ({"flag": [1, None]}, "flag", "true or false"),
        ({"cat": ["c", "a"]}, "cat", "not one of"),
        ({"cat": [None, "a"]}, "cat", "null in a non-nullable"),
        ({"code": ["ABC", None]}, "code", "max_length"),
        ({"code": ["ab", None]}, "code", "regex"),
        ({"code": [{"a": 1}, None]}, "code", "expected a string"),
        ({"at": ["yesterday", "2024-01-01"]}, "at", "not an ISO 8601"),
        ({"at": [1700000000, "2024-01-01"]}, "at", "ISO 8601 timestamp string"),
        ({"y": [2, 0]}, "y", "not one of"),
    ],
)
def test_each_violation_is_named(change, field, needle):
    found = problems({**GOOD, **change})
    assert list(found) == [field]
    assert any(needle in e for e in found[field]), found


def test_unknown_and_missing_columns_are_named_together():
    data = {k: v for k, v in GOOD.items() if k not in ("x", "z")}
    found = problems({**data, "extra": [1, 2]})
    assert found["extra"] == ["unknown column: the contract does not name it"]
    assert found["x"] == ["missing column"]
    assert "z" not in found  # nullable columns may be left out


def test_rows_at_fault_are_reported():
    with pytest.raises(RequestError) as info:
        check({**{k: v * 10 for k, v in GOOD.items()}, "n": [5, 50] * 10})
    assert info.value.fields[0]["rows"] == [1, 3, 5, 7, 9]  # the first five


def test_concat_and_frame_keep_types_and_nulls():
    a, b = check(GOOD), check({**GOOD, "z": [1.0, 2.0], "flag": [False, True]})
    both = concat_rows([a, b])
    assert both.n_rows == 4
    assert both.columns["z"].mask.tolist() == [True, False, False, False]
    frame = to_frame(both)
    assert str(frame["n"].dtype) == "Int64" and frame["flag"].isna().tolist() == [False, True, False, False]


def test_demo_rows_pass_the_demo_contract():
    frame = demo_rows(50, seed=3)
    rows = check({c: frame[c].tolist() for c in frame.columns}, load_contract(DEMO_CONTRACT))
    assert rows.n_rows == 50


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*GOOD, "id", "y", "other"]),
        st.lists(json_values, min_size=2, max_size=2),
        max_size=9,
    )
)
def test_any_json_values_give_typed_rows_or_a_422(data):
    try:
        rows = check(data)
    except RequestError as exc:
        assert exc.status == 422 and exc.fields
        return
    assert rows.n_rows == 2


def test_plain_timestamps_skip_arrow_and_parse_as_arrow_would(monkeypatch):
    """The common spelling (naive, to the second) is parsed by numpy, not a ~25 us Arrow cast per request;
    the values are Arrow's, and every other spelling (offset, fraction, null, a day the month lacks) still
    takes Arrow's path."""
    import pyarrow as pa

    from loopline.serving import inputs

    plain = ["2024-02-29T23:59:59", "1999-12-31T00:00:00", "2023-01-01T12:34:56"]
    others = [
        ["2023-02-29T00:00:00"],
        ["2023-02-28T00:00:00+01:00"],
        ["2023-02-28T00:00:00.5"],
        [None, plain[0]],
    ]
    expected = {tuple(raw): inputs.parse_timestamps(raw).astype("int64").tolist() for raw in [plain, *others]}
    assert (
        expected[tuple(plain)]
        == np.asarray(
            pa.array(plain, type=pa.string()).cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
        )
        .astype("int64")
        .tolist()
    )
    casts = []
    real_array = pa.array
    monkeypatch.setattr(pa, "array", lambda *a, **k: casts.append(a) or real_array(*a, **k))
    assert inputs.parse_timestamps(plain).astype("int64").tolist() == expected[tuple(plain)]
    assert casts == []  # no Arrow on the common path
    for raw in others:
        before = len(casts)
        assert inputs.parse_timestamps(raw).astype("int64").tolist() == expected[tuple(raw)]
        assert len(casts) > before  # Arrow's path decided this one
