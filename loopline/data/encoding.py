"""How the data plane's Parquet files are encoded: dictionary encoding only where a column has few values.

Writers (delta-rs and pyarrow alike) try a dictionary for every column by default and fall back to plain
encoding once the dictionary outgrows its page: on a column of 1M distinct floats or texts that attempt is
most of the write's cost. Measured on 250k demo rows (`python -m bench data_plane`, 2 cores): the clean/D
commit 0.93 s CPU with the defaults, 0.15 s with a dictionary only on the few-valued columns (and 5% smaller
files); the raw/D commit (every value as text) 1.8 s against 0.25 s. So a dictionary goes to the columns the
contract says have few values (category, bool, a `values` list) and to the batch metadata (one value per
batch), and every other column is written plain.

Statistics: raw/D and quarantine/D are read by `_batch_id` and `_row` only (the rows a clean commit moved);
min/max statistics of their text columns cost half of what is left of a raw commit and serve no reader, so
they are kept for the metadata columns only. clean/D, features/D and the staged files keep theirs where a
reader prunes by them (the id range, `_batch_id`).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from deltalake import ColumnProperties, WriterProperties

from loopline.data.contracts import Contract

# one value per batch (or a handful per table): a dictionary holds them in a few bytes
FEW_VALUED_META = ("_batch_id", "_source", "_ingested_at", "_transform", "_split")


RAW_CODEC = (
    "zstd",
    1,
)  # raw/D and quarantine/D (1M demo rows of text: 704 MiB plain, 470 snappy, 264 zstd-1)


def few_valued(contract: Contract) -> list[str]:
    """The contract columns whose values come from a short list: worth a dictionary."""
    return [
        name
        for name, spec in contract.columns.items()
        if spec.type in ("category", "bool") or spec.values is not None
    ]


def writer_properties(
    schema: pa.Schema,
    dictionary: Iterable[str],
    *,
    no_statistics: Iterable[str] = (),
    compression: str = "SNAPPY",
    compression_level: int | None = None,
) -> WriterProperties:
    """delta-rs writer properties for `schema`: a dictionary on the `dictionary` columns and the batch
    metadata, plain encoding elsewhere; no min/max statistics for `no_statistics`. The codec is always
    explicit: WriterProperties without one writes UNCOMPRESSED, unlike write_deltalake's default (snappy)."""
    with_dict = set(dictionary) | set(FEW_VALUED_META)
    no_stats = set(no_statistics)
    columns = {}
    for name in schema.names:
        props = {}
        if name in with_dict:
            props["dictionary_enabled"] = True
        if name in no_stats:
            props["statistics_enabled"] = "NONE"
        if props:
            columns[name] = ColumnProperties(**props)
    return WriterProperties(
        compression=compression,
        compression_level=compression_level,
        default_column_properties=ColumnProperties(dictionary_enabled=False),
        column_properties=columns,
    )


def raw_properties(contract: Contract, schema: pa.Schema) -> WriterProperties:
    """raw/D and quarantine/D: every value as text; statistics on the metadata columns only. zstd level 1:
    the same CPU as snappy on this text, files half the size (an archive, written once, rarely read)."""
    text = [*contract.column_names, "_extra", "_reasons"]
    return writer_properties(
        schema,
        few_valued(contract),
        no_statistics=[n for n in text if n in schema.names],
        compression=RAW_CODEC[0].upper(),
        compression_level=RAW_CODEC[1],
    )


def clean_properties(contract: Contract, schema: pa.Schema) -> WriterProperties:
    """clean/D (and features/D): typed columns, statistics kept (readers prune by id and `_batch_id`)."""
    return writer_properties(schema, few_valued(contract))


def clean_parquet_options(contract: Contract, schema: pa.Schema) -> dict:
    """`clean_properties` as pyarrow ParquetWriter keywords (loopline.storage.delta_files: the commit's files
    written by pyarrow, 40% less CPU than delta-rs's writer on 1M demo rows of clean/D or features/D)."""
    few = {*few_valued(contract), *FEW_VALUED_META}
    return {
        "compression": "snappy",
        "use_dictionary": [n for n in schema.names if n in few],
        "write_statistics": True,
    }


def staging_options(contract: Contract) -> dict:
    """pyarrow.parquet.write_table options of the staged files (read once, a moment later: speed over size)."""
    return {
        "compression": "lz4",
        "use_dictionary": [*few_valued(contract), *FEW_VALUED_META],
        "write_statistics": False,
    }
