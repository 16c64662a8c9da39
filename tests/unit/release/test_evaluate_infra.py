"""Infra validation's sample rows stay inside the contract and cover its edges; output checks catch bad models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopline.config import SyntheticConfig
from loopline.data.contracts import load_contract
from loopline.data.synthetic import generate_frame
from loopline.release.infra_validation import check_outputs, request_body, sample_rows

REPO_CONTRACT = "contracts/demo.yaml"


@pytest.mark.parametrize("with_real_rows", [True, False])
def test_sample_rows_cover_the_contract_edges(with_real_rows):
    contract = load_contract(REPO_CONTRACT)
    real = generate_frame(SyntheticConfig(rows=50, seed=1)) if with_real_rows else None
    rows = sample_rows(contract, real, 20)
    assert list(rows.columns) == contract.feature_columns  # no id, no label: what a client sends
    assert len(rows) == (20 if with_real_rows else 0) + 5  # 4 channel values + a null channel
    for name in contract.feature_columns:
        spec = contract.columns[name]
        col = rows[name]
        if not spec.nullable:
            assert col.notna().all(), name
        else:
            assert col.isna().any(), name
        if spec.values:
            assert set(spec.values) <= set(col.dropna()), name
            assert set(col.dropna()) <= set(spec.values), name
        if spec.is_numeric:
            values = col.dropna().to_numpy(dtype=float)
            if spec.min is not None:
                assert values.min() == spec.min, name
            if spec.max is not None:
                assert values.max() == spec.max, name
    assert str(rows["age"].dtype) == "int64" and str(rows["signup_at"].dtype).startswith("datetime64")


def test_output_checks():
    check_outputs(pd.Series([0.1, 0.9]), 2, "binary", [])
    check_outputs(np.array(["a", "b"]), 2, "multiclass", ["a", "b", "c"])
    check_outputs(np.array([-3.0, 1e6]), 2, "regression", [])
    with pytest.raises(ValueError, match="shape"):
        check_outputs(np.array([0.1]), 2, "binary", [])
    with pytest.raises(ValueError, match="outside"):
        check_outputs(np.array([0.1, 1.5]), 2, "binary", [])
    with pytest.raises(ValueError, match="non-finite"):
        check_outputs(np.array([np.nan, 1.0]), 2, "regression", [])
    with pytest.raises(ValueError, match="outside the contract's classes"):
        check_outputs(np.array(["a", "z"]), 2, "multiclass", ["a", "b"])
    with pytest.raises(ValueError, match="non-numeric"):
        check_outputs(np.array(["x", "y"]), 2, "binary", [])


def test_the_sample_rows_travel_as_a_request_the_server_accepts():
    # edge rows (bounds, every category, nulls) and real rows, as a client's dataframe_split JSON body
    from loopline.serving.inputs import InputChecker
    from loopline.serving.protocol import parse_body

    contract = load_contract(REPO_CONTRACT)
    rows = sample_rows(contract, generate_frame(SyntheticConfig(rows=30, seed=2)), 20)
    cols = parse_body(request_body(rows))
    typed = InputChecker(contract).check(cols)  # raises RequestError(422) on any row the server refuses
    assert cols.format == "dataframe_split" and typed.n_rows == len(rows)
    for name in contract.feature_columns:
        assert typed.columns[name].mask is None or typed.columns[name].mask.sum() == rows[name].isna().sum()
    np.testing.assert_array_equal(
        typed.columns["signup_at"].values.astype("datetime64[us]"),
        rows["signup_at"].to_numpy().astype("datetime64[us]"),
    )
