"""The data plane's speed-ups keep what lands: real ingests and features builds into a local lake.

- raw/D, clean/D and features/D are encoded with a dictionary only where values are few (a float or free
  text column plain, a category column and the batch metadata with a dictionary); raw/D keeps no min/max
  statistics of its text columns; every table is compressed. The rows are the same whatever the encoding.
- the source is read one chunk ahead on a thread: rows stay in order, a read error surfaces in the consumer,
  and a consumer that stops early lets the reader end.
- the transform's Arrow paths for text columns give exactly what the object path (serving's) gives.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopline.data.raw_writer import read_ahead
from loopline.features.transform import _category_codes, _text_lengths
from loopline.storage import delta
from tests import data_support as ds


def _column_chunks(table_dir: Path, column: str) -> list:
    chunks = []
    for f in sorted(table_dir.glob("*.parquet")):
        md = pq.ParquetFile(f).metadata
        at = md.schema.to_arrow_schema().get_field_index(column)
        chunks += [md.row_group(g).column(at) for g in range(md.num_row_groups)]
    assert chunks, f"no data files in {table_dir}"
    return chunks


def test_tables_use_a_dictionary_only_where_values_are_few(tmp_path):
    from loopline.features.table import build_features

    contract_path = ds.write_contract(tmp_path)
    source = ds.write_batch(tmp_path / "b1.csv", list(range(3000)))
    result = ds.ingest(tmp_path / "home", contract_path, source)
    assert result["accepted"] and result["rows_clean"] == 3000
    contract, lake, cfg = ds.setup(tmp_path / "home", contract_path)
    build_features(lake, contract, cfg.features)
    root = tmp_path / "home" / "lake"
    raw, clean, feats = (root / kind / contract.dataset for kind in ("raw", "clean", "features"))

    for table, few, many in (
        (raw, ["segment", "_batch_id", "_source"], ["income", "note", "customer_id"]),
        (clean, ["segment", "_batch_id"], ["income", "note", "customer_id"]),
        (feats, ["_split", "_batch_id", "_transform"], ["income"]),
    ):
        for name in few:
            assert all(c.has_dictionary_page for c in _column_chunks(table, name)), (table.name, name)
        for name in many:
            assert not any(c.has_dictionary_page for c in _column_chunks(table, name)), (table.name, name)
    # raw/D: no statistics on the text as received; the metadata keeps them (quarantine reads raw by _row)
    assert not any(c.is_stats_set for c in _column_chunks(raw, "income"))
    assert all(c.is_stats_set for c in _column_chunks(raw, "_row"))
    assert all(c.is_stats_set for c in _column_chunks(clean, "customer_id"))  # TableIds prunes by it
    # always compressed (WriterProperties without a codec writes UNCOMPRESSED): raw as zstd, the rest snappy
    assert {c.compression for c in _column_chunks(raw, "income")} == {"ZSTD"}
    for table in (clean, feats):
        assert {c.compression for c in _column_chunks(table, "income")} == {"SNAPPY"}, table.name

    rows = delta.read_column(lake, lake.table_uri("clean", contract.dataset), ["customer_id", "segment"])
    assert sorted(rows["customer_id"].to_pylist()) == list(range(3000))
    assert rows["segment"].to_pylist()[:3] == ["retail", "sme", "corp"]


def test_read_ahead_keeps_order_raises_in_the_consumer_and_ends_when_the_consumer_stops():
    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise ValueError("row 7 of file x.csv")

    got = []
    with pytest.raises(ValueError, match="file x.csv"):
        for item in read_ahead(broken()):
            got.append(item)
    assert got == [1]

    before = threading.active_count()
    chunks = read_ahead(iter(range(1000)))
    assert next(chunks) == 0
    chunks.close()  # the consumer stops early: the reader thread must not stay blocked on a full queue
    assert threading.active_count() == before


def test_text_fast_paths_equal_the_object_path():
    values = ["retail", None, "sme", "unknown-x", "", "é😀 note", "corp"]
    vocab = ["retail", "sme", "corp"]
    arrow_backed = pd.Series(values, dtype="str")
    objects = pd.Series(values, dtype=object)
    np.testing.assert_array_equal(_category_codes(arrow_backed, vocab), _category_codes(objects, vocab))
    np.testing.assert_array_equal(_category_codes(arrow_backed, vocab), [0, 3, 1, 3, 3, 3, 2])
    np.testing.assert_array_equal(_text_lengths(arrow_backed), _text_lengths(objects))
    np.testing.assert_array_equal(
        _text_lengths(pd.Series(pa.array(values), dtype="str")), [6, 0, 3, 9, 0, 7, 4]
    )
