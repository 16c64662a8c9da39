import numpy as np
import pandas as pd
import pytest

from loopline.config import FeaturesConfig
from loopline.data.contracts import parse_contract
from loopline.features import FeatureTransform, assign_split, fit_transform

CONTRACT = parse_contract(
    {
        "dataset": "t",
        "id": "id",
        "label": "y",
        "task": "binary",
        "columns": {
            "id": {"type": "int"},
            "x": {"type": "float", "nullable": True},
            "seg": {"type": "category", "values": ["a", "b"]},
            "at": {"type": "timestamp"},
            "flag": {"type": "bool"},
            "note": {"type": "string", "nullable": True},
            "y": {"type": "int", "values": [0, 1]},
        },
    }
)
FRAME = pd.DataFrame(
    {
        "id": [1, 2, 3, 4],
        "x": [1.0, 3.0, np.nan, 100.0],
        "seg": ["a", "b", "a", "b"],
        "at": pd.to_datetime(
            ["2025-01-01 05:00", "2025-02-03 10:00", "2025-03-01 00:00", "2025-12-31 23:00"]
        ),
        "flag": [True, False, True, False],
        "note": ["hi", None, "hello", ""],
        "y": [0, 1, 0, 1],
    }
)


def fit(**kw) -> FeatureTransform:
    return fit_transform(FRAME, CONTRACT, FeaturesConfig(**kw))


def column(t: FeatureTransform, frame: pd.DataFrame, name: str) -> np.ndarray:
    return t.transform(frame)[:, t.feature_names.index(name)]


def test_standardise_imputes_missing_and_flags_it():
    t = fit()
    x = column(t, FRAME, "x")
    observed = np.array([1.0, 3.0, 100.0])
    expected = (observed - observed.mean()) / observed.std()
    np.testing.assert_allclose(x[[0, 1, 3]], expected, rtol=1e-6)
    assert x[2] == 0.0 and column(t, FRAME, "x__isnull").tolist() == [0, 0, 1, 0]


def test_log1p_clip_passthrough():
    lg = column(fit(numeric="log1p"), FRAME, "x")
    v = np.log1p(np.array([1.0, 3.0, 100.0]))
    np.testing.assert_allclose(lg[[0, 1, 3]], (v - v.mean()) / v.std(), rtol=1e-5)
    t = fit(numeric="clip", clip_quantiles=(0.0, 0.5))
    step = t.steps[0]
    assert step["hi"] == pytest.approx(3.0)
    assert column(t, FRAME, "x")[3] == column(t, FRAME, "x")[1]  # 100 clipped to 3
    assert column(fit(numeric="passthrough"), FRAME, "x")[[0, 3]].tolist() == [1.0, 100.0]


def test_onehot_and_index_have_an_unknown_bucket():
    t = fit()
    unseen = FRAME.assign(seg=["a", "zzz", None, "b"])
    onehot = np.column_stack([column(t, unseen, n) for n in ("seg__a", "seg__b", "seg__unknown")])
    assert onehot.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0]]
    idx = column(fit(categorical="index"), unseen, "seg__index")
    assert idx.tolist() == [1, 0, 0, 2]


def test_timestamp_parts_bool_and_string_length():
    t = fit(timestamp_parts=["hour", "month"])
    np.testing.assert_allclose(column(t, FRAME, "at__hour"), np.array([5, 10, 0, 23]) / 23.0, rtol=1e-6)
    np.testing.assert_allclose(column(t, FRAME, "at__month"), np.array([1, 2, 3, 12]) / 11.0, rtol=1e-6)
    assert column(t, FRAME, "flag").tolist() == [1, 0, 1, 0]
    assert "note__len" in t.feature_names and "y" not in t.feature_names and "id" not in t.feature_names


def test_transform_round_trips_through_json_and_is_versioned():
    t = fit()
    again = FeatureTransform.from_dict(t.to_dict())
    np.testing.assert_array_equal(again.transform(FRAME), t.transform(FRAME))
    assert again.version == t.version and fit(numeric="log1p").version != t.version
    assert t.transform(FRAME).dtype == np.float32 and np.isfinite(t.transform(FRAME)).all()


def test_split_is_stable_and_follows_fractions():
    ids = np.arange(20_000)
    a = assign_split(ids, (0.8, 0.1, 0.1))
    assert (a == assign_split(ids, (0.8, 0.1, 0.1))).all()
    assert abs((a == "train").mean() - 0.8) < 0.02 and abs((a == "test").mean() - 0.1) < 0.02
    assert (assign_split(ids[::-1], (0.8, 0.1, 0.1))[::-1] == a).all()  # depends on the id only


def test_split_of_integer_ids_hashes_the_text_str_gives():
    """Plain int ids take a faster text path: the split must stay the one `str(id)` always gave (the splits
    of models already trained depend on it), for every integer width, negatives and int64's extremes."""
    from loopline.features.transform import _id_text

    values = [0, 7, -3, 10**12, 2**63 - 1, -(2**63)]
    for dtype in ("int64", "int32", "uint64", "uint8"):
        ids = pd.Series([v for v in values if np.can_cast(np.min_scalar_type(v), dtype)], dtype=dtype)
        assert _id_text(ids).tolist() == [str(v) for v in ids.tolist()]
    ids = pd.Series(np.arange(-50_000, 50_000, 7, dtype=np.int64))
    expected = pd.util.hash_array(ids.astype(str).to_numpy(dtype=object), categorize=False)
    assert (pd.util.hash_array(_id_text(ids), categorize=False) == expected).all()
    nullable = pd.Series([1, None], dtype="Int64")  # not plain numpy: pandas' text, as before
    got, want = _id_text(nullable), nullable.astype(str).to_numpy(dtype=object)
    assert got[0] == want[0] == "1" and pd.isna(got[1]) and pd.isna(want[1])


def test_a_refit_samples_files_from_the_whole_table_not_only_the_oldest(tmp_path, monkeypatch):
    """Ten batches, each with its own `x`, and room for about three batches' train rows: the sample takes
    files spread from the oldest to the newest (it took the three listed first: the newest), and stays
    within its bound."""
    from deltalake import DeltaTable, write_deltalake

    import loopline.features.table as table
    from loopline.storage.delta import dataset, files_and_rows

    contract = parse_contract(
        {
            "dataset": "spread",
            "id": "id",
            "label": "y",
            "task": "binary",
            "columns": {
                "id": {"type": "int"},
                "x": {"type": "float"},
                "y": {"type": "int", "values": [0, 1]},
            },
        }
    )
    for batch in range(10):
        ids = np.arange(batch * 500, (batch + 1) * 500)
        write_deltalake(
            str(tmp_path),
            pd.DataFrame({"id": ids, "x": float(batch), "y": ids % 2}),
            mode="append",
        )
    monkeypatch.setattr(table, "FIT_SAMPLE_ROWS", 1000)
    cfg = FeaturesConfig()
    rows = files_and_rows(DeltaTable(str(tmp_path)))[1]  # 5000, from the log
    sample = table._train_sample(dataset(DeltaTable(str(tmp_path))), rows, contract, cfg)
    batches = set(sample["x"].astype(int))
    assert {0, 9} <= batches and len(batches) >= 3, batches
    assert len(sample) <= 1000 + 500 and set(assign_split(sample["id"], cfg.split_fractions)) == {"train"}
    small = table._train_sample(dataset(DeltaTable(str(tmp_path))), rows, contract, FeaturesConfig())
    monkeypatch.setattr(table, "FIT_SAMPLE_ROWS", 10_000)  # the whole table fits: every train row
    every = table._train_sample(dataset(DeltaTable(str(tmp_path))), rows, contract, cfg)
    assert len(every) == int((assign_split(np.arange(5000), cfg.split_fractions) == "train").sum())
    assert len(small) < len(every)


def test_distinct_batch_ids_stream_in_order_of_first_appearance():
    # the build's batch and transform lists, one record batch at a time instead of the whole column in memory
    import pyarrow as pa
    import pyarrow.dataset as pads

    from loopline.features.table import _distinct

    first = pa.table({"_batch_id": ["b2"] * 3 + ["b1"] * 2, "_transform": ["t1"] * 5})
    second = pa.table({"_batch_id": ["b1", "b3"], "_transform": ["t2", "t1"]})
    ds = pads.dataset([first, second])
    assert _distinct(ds, ["_batch_id", "_transform"]) == [["b2", "b1", "b3"], ["t1", "t2"]]
