"""The serving path's compiled feature transform equals loopline.features' pandas transform, bit for bit."""

import numpy as np
import pandas as pd
import pytest

from loopline.config import FeaturesConfig, SyntheticConfig
from loopline.data.contracts import load_contract, parse_contract
from loopline.data.synthetic import generate_frame
from loopline.features import fit_transform
from loopline.serving.inputs import InputChecker, to_frame
from loopline.serving.protocol import Columns
from loopline.serving.transform import compile_transform
from tests.serving_support import DEMO_CONTRACT, demo_rows

CONFIGS = [
    FeaturesConfig(),
    FeaturesConfig(
        categorical="index",
        numeric="passthrough",
        numeric_overrides={
            "f00": "log1p",
            "f01": "clip",
            "f02": "standardise",
            "age": "log1p",
            "f04": "clip",
        },
        timestamp_parts=["hour", "dayofweek", "month", "dayofyear", "year"],
    ),
    FeaturesConfig(numeric="clip", timestamp_parts=[]),
]


def _rows(frame: pd.DataFrame | dict, contract):
    data = frame if isinstance(frame, dict) else {c: frame[c].tolist() for c in frame.columns}
    n = len(next(iter(data.values())))
    return InputChecker(contract).check(Columns(data, n, "test"))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_compiled_transform_equals_the_pandas_transform_on_demo_rows(cfg):
    contract = load_contract(DEMO_CONTRACT)
    transform = fit_transform(generate_frame(SyntheticConfig(rows=400, seed=2)), contract, cfg)
    frame = demo_rows(300, seed=4)
    # nulls in every nullable column, and empty notes
    for col in ("f01", "f04", "channel", "note"):
        frame.loc[frame.index[::7], col] = None
    frame.loc[frame.index[::5], "note"] = ""
    rows = _rows(frame, contract)
    compiled = compile_transform(transform)
    assert compiled is not None
    expected = transform.transform(to_frame(rows)[contract.feature_columns])
    got = compiled(rows)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_bools_old_dates_and_null_timestamps_match():
    contract = parse_contract(
        {
            "dataset": "b",
            "id": "id",
            "label": "y",
            "task": "regression",
            "columns": {
                "id": {"type": "int"},
                "flag": {"type": "bool", "nullable": True},
                "at": {"type": "timestamp", "nullable": True},
                "text": {"type": "string", "nullable": True},
                "y": {"type": "float"},
            },
        }
    )
    train = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "flag": [True, False, None],
            "at": pd.to_datetime(["1969-12-31 23:30:00", "2024-02-29 12:00:00", "1900-03-01 00:00:00"]),
            "text": ["a", "bb", None],
            "y": [0.0, 1.0, 2.0],
        }
    )
    cfg = FeaturesConfig(timestamp_parts=["hour", "dayofweek", "month", "dayofyear", "year"])
    transform = fit_transform(train, contract, cfg)
    rows = _rows(
        {
            "flag": [True, None, False, True],
            "at": ["1969-12-31T23:30:00", None, "1900-03-01T00:00:00", "2024-12-31T23:59:59.999"],
            "text": ["héllo", None, "", "x" * 50],
        },
        contract,
    )
    compiled = compile_transform(transform)
    expected = transform.transform(to_frame(rows)[contract.feature_columns])
    assert np.array_equal(compiled(rows), expected)


def test_an_unknown_step_kind_falls_back_to_the_pandas_transform():
    contract = load_contract(DEMO_CONTRACT)
    transform = fit_transform(generate_frame(SyntheticConfig(rows=100, seed=2)), contract, FeaturesConfig())
    transform.steps[0] = {**transform.steps[0], "kind": "something_new"}
    assert compile_transform(transform) is None


def test_the_check_matrix_block_gives_the_same_bits_as_the_columns():
    """The input check hands its float64 matrix of number columns to the transform (TypedRows.numbers); the
    features from it equal those re-stacked from the typed columns, whole, sliced, and when a column
    left the one-pass check (a whole float in an int column), where the transform uses the columns."""
    import dataclasses

    from loopline.serving.inputs import slice_rows

    contract = load_contract(DEMO_CONTRACT)
    cfg = CONFIGS[1]  # log1p, clip, standardise and passthrough columns
    transform = fit_transform(generate_frame(SyntheticConfig(rows=400, seed=2)), contract, cfg)
    compiled = compile_transform(transform)
    frame = demo_rows(40, seed=9)
    frame.loc[frame.index[::3], ["f01", "f04"]] = None
    rows = _rows(frame, contract)
    assert rows.numbers is not None and "age" in rows.numbers[0]
    columns_only = dataclasses.replace(rows, numbers=None)
    assert np.array_equal(compiled(rows), compiled(columns_only))
    part = slice_rows(rows, 5, 17)
    assert part.numbers[1].shape[1] == 12
    assert np.array_equal(compiled(part), compiled(slice_rows(columns_only, 5, 17)))

    data = {c: frame[c].tolist() for c in frame.columns}
    data["age"] = [float(v) for v in data["age"]]  # 42.0: accepted by the column path, not the one-pass one
    mixed = _rows(data, contract)
    assert mixed.numbers is not None and "age" not in mixed.numbers[0]
    assert np.array_equal(compiled(mixed), compiled(rows))
