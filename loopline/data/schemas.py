"""The Arrow schemas of a dataset's Delta tables: raw/D, quarantine/D, clean/D and the batch ledger batches/D,
and the one map from a contract's column types to Arrow types (clean/D and the inference log use it).

raw/D keeps every value as received (strings), unexpected columns as JSON in `_extra`, then META_COLUMNS;
quarantine/D is raw/D plus `_reasons`; clean/D holds the contract's columns typed, plus `_batch_id` and
`_ingested_at`.
"""

from __future__ import annotations

import pyarrow as pa

from loopline.data.contracts import Contract

# a contract column's `type` -> its Arrow type once validated (clean/D, predictions/M)
ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "category": pa.string(),
    "timestamp": pa.timestamp("us"),
}

# the batch metadata raw/D (and quarantine/D) append to every row
META_COLUMNS = ("_batch_id", "_source", "_ingested_at", "_row")


def raw_schema(contract: Contract) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in contract.column_names]
    fields += [pa.field("_extra", pa.string())]
    fields += [
        pa.field("_batch_id", pa.string()),
        pa.field("_source", pa.string()),
        pa.field("_ingested_at", pa.timestamp("us", tz="UTC")),
        pa.field("_row", pa.int64()),
    ]
    return pa.schema(fields)


def quarantine_schema(contract: Contract) -> pa.Schema:
    return raw_schema(contract).append(pa.field("_reasons", pa.string()))


def clean_schema(contract: Contract) -> pa.Schema:
    fields = [pa.field(name, ARROW_TYPES[spec.type]) for name, spec in contract.columns.items()]
    fields += [pa.field("_batch_id", pa.string()), pa.field("_ingested_at", pa.timestamp("us", tz="UTC"))]
    return pa.schema(fields)


def ledger_schema() -> pa.Schema:
    return pa.schema(
        [
            ("batch_id", pa.string()),
            ("source", pa.string()),
            ("status", pa.string()),
            ("rows_in", pa.int64()),
            ("rows_clean", pa.int64()),
            ("rows_quarantined", pa.int64()),
            ("contract_hash", pa.string()),
            ("ingested_at", pa.timestamp("us", tz="UTC")),
        ]
    )
