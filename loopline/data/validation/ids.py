"""A set of ids for membership tests over millions of values, without one Python object per id.

The gate asks, per chunk, "which of these ids were seen before?" against the ids already in clean/D and the
ids claimed by earlier chunks of the batch. A hash set of 10M Python ints costs ~1 GB and a rebuilt pandas
index per chunk costs O(n) each time; sorted runs of numpy values cost 8 bytes an id and O(log n) runs:
`add` appends a sorted run and merges runs of similar size (like a log-structured merge tree), `contains`
binary-searches each run.

The ids already in clean/D are not loaded at all: `TableIds` looks up each chunk's ids in one snapshot of the
table (Arrow filter pushdown), so an ingest's memory follows its own batch, not the table.
"""

from __future__ import annotations

import numpy as np


class ValueSet:
    def __init__(self, values: np.ndarray | None = None, dtype: np.dtype | str | None = None):
        self._dtype = np.dtype(dtype) if dtype is not None else None
        self._runs: list[np.ndarray] = []
        if values is not None:
            self.add(values)

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def _as_array(self, values) -> np.ndarray:
        arr = np.asarray(values)
        if self._dtype is None:
            self._dtype = arr.dtype if arr.dtype.kind in "iufM" else np.dtype(object)
        if arr.dtype != self._dtype:
            arr = arr.astype(self._dtype)
        return arr

    def add(self, values) -> None:
        arr = _sorted_unique(self._as_array(values))
        if not len(arr):
            return
        self._runs.append(arr)
        # keep run sizes geometrically decreasing, so there are O(log n) runs to search
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = _sorted_unique(np.concatenate([self._runs[-1], last]))

    def contains(self, values) -> np.ndarray:
        arr = self._as_array(values)
        found = np.zeros(len(arr), dtype=bool)
        for run in self._runs:
            pos = np.searchsorted(run, arr)
            hit = pos < len(run)
            hit[hit] = run[pos[hit]] == arr[hit]
            found |= hit
        return found


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hash-based np.unique is ~30x slower on int64 here)."""
    if not len(values):
        return values
    ordered = np.sort(values, kind="stable")
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class TableIds:
    """The ids of one snapshot of a Delta table (clean/D), looked up a few at a time instead of loaded.

    `contains(values)` reads only the rows whose id is among `values` (Arrow filter pushdown: the id range
    prunes files by their Delta min/max stats and row groups by their Parquet stats, `isin` filters the rest),
    so an ingest costs memory in proportion to its own batch, not to the table. Rows of `exclude_batch` do not
    count (a crashed attempt of the same batch may have committed them). `holders(values)` says which batch
    holds each id found: the reason a row moved to quarantine names it.
    """

    def __init__(self, table, id_column: str, *, exclude_batch: str | None = None):
        self.table, self.id_column, self.exclude_batch = table, id_column, exclude_batch
        self.version = None if table is None else table.version()
        self._dataset = None

    def __bool__(self) -> bool:
        return self.table is not None

    def holders(self, values) -> dict:
        """{id: batch id holding it} for the `values` present in the snapshot (outside `exclude_batch`)."""
        found = self._find(values)
        if found is None:
            return {}
        return dict(zip(found[self.id_column].to_pylist(), found["_batch_id"].to_pylist(), strict=True))

    def contains(self, values) -> np.ndarray:
        arr = np.asarray(values)
        found = self._find(arr)
        if found is None or not found.num_rows:
            return np.zeros(len(arr), dtype=bool)
        return np.isin(arr, found[self.id_column].to_numpy().astype(arr.dtype, copy=False))

    def _find(self, values):
        """The (id, _batch_id) rows of the snapshot whose id is among `values`; None when there is nothing to
        look up."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.table is None or not len(values):
            return None
        arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(np.asarray(values))
        if self._dataset is None:
            from loopline.storage.delta import dataset

            self._dataset = dataset(self.table)
        stored = self._dataset.schema.field(self.id_column).type
        arr = pc.unique(arr.drop_null())
        if not len(arr):
            return None
        if arr.type != stored:
            arr = arr.cast(stored)
        field = pc.field(self.id_column)
        flt = field.isin(arr)
        if pa.types.is_integer(stored) or pa.types.is_floating(stored) or pa.types.is_timestamp(stored):
            bounds = pc.min_max(arr)
            flt = (field >= bounds["min"]) & (field <= bounds["max"]) & flt  # prunes files by their stats
        if self.exclude_batch is not None:
            flt = flt & (pc.field("_batch_id") != self.exclude_batch)
        return self._dataset.to_table(columns=[self.id_column, "_batch_id"], filter=flt)
