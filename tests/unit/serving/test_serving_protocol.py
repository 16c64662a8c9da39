"""MLflow's four input formats parse to the same columns; malformed bodies are 400s that say why."""

import orjson
import pytest

from loopline.serving.protocol import RequestError, encode_predictions, parse_body

ROWS = [{"a": 1, "b": "x"}, {"a": 2, "b": None}]


@pytest.mark.parametrize(
    "doc",
    [
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, None]]}},
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, None]], "index": [0, 1]}},
        {"dataframe_records": ROWS},
        {"instances": ROWS},
        {"inputs": {"a": [1, 2], "b": ["x", None]}},
        {"inputs": ROWS},
        {"dataframe_records": ROWS, "params": {"ignored": True}},
    ],
)
def test_every_format_gives_the_same_columns(doc):
    cols = parse_body(orjson.dumps(doc))
    assert cols.n_rows == 2
    assert cols.data == {"a": [1, 2], "b": ["x", None]}


def test_records_with_different_keys_fill_missing_values_with_null():
    cols = parse_body(orjson.dumps({"dataframe_records": [{"a": 1}, {"b": "y"}]}))
    assert cols.data == {"a": [1, None], "b": [None, "y"]}


def test_single_instance_and_scalar_inputs_are_one_row():
    assert parse_body(orjson.dumps({"instances": {"a": 1}})).data == {"a": [1]}
    assert parse_body(orjson.dumps({"inputs": {"a": 1, "b": "x"}})).data == {"a": [1], "b": ["x"]}


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', "dataframe_split.data[0]"),
        (b'{"dataframe_split": {"data": [[1]]}}', "columns"),
        (b'{"dataframe_records": {"a": 1}}', "list of objects"),
        (b'{"dataframe_records": [{"a": 1}, 3]}', "dataframe_records[1]"),
        (b'{"inputs": {"a": [1, 2], "b": [1]}}', "same length"),
        (b'{"instances": [1, 2]}', "instances[0]"),
        (b'{"dataframe_records": [], "instances": []}', "exactly one"),
        (b'{"rows": []}', "exactly one"),
    ],
)
def test_malformed_bodies_are_400_with_a_reason(body, needle):
    with pytest.raises(RequestError) as info:
        parse_body(body)
    assert info.value.status == 400
    assert needle in info.value.message
    assert orjson.loads(info.value.body())["error_code"] == "BAD_REQUEST"


def test_duplicate_columns_are_422_naming_them():
    with pytest.raises(RequestError) as info:
        parse_body(b'{"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}')
    assert info.value.status == 422
    assert info.value.fields[0]["field"] == "a"


def test_predictions_are_encoded_like_mlflow_encodes_an_array():
    import numpy as np

    assert orjson.loads(encode_predictions(np.array([0.25, 0.5]))) == {"predictions": [0.25, 0.5]}
    assert orjson.loads(encode_predictions(np.array(["a", "b"], dtype=object))) == {"predictions": ["a", "b"]}
    assert orjson.loads(encode_predictions(np.array([3, 1]))) == {"predictions": [3, 1]}
    # a multiclass model's text labels come back from the predictor as a numpy text array ('<U1'), which
    # orjson's numpy support refuses ("unsupported datatype"): every such model failed infra validation
    labels = np.asarray(np.array(["a", "c"], dtype=object).tolist())
    assert labels.dtype.kind == "U"
    assert orjson.loads(encode_predictions(labels)) == {"predictions": ["a", "c"]}
