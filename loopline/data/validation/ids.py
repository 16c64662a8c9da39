"""A set of ids for membership tests over millions of values, without one Python object per id.

The gate asks, per chunk, "which of these ids were seen before?" against the ids already in clean/D and the
ids claimed by earlier chunks of the batch. A hash set of 10M Python ints costs ~1 GB and a rebuilt pandas
index per chunk costs O(n) each time; sorted runs of numpy values cost 8 bytes an id and O(log n) runs:
`add` appends a sorted run and merges runs of similar size (like a log-structured merge tree), `contains`
binary-searches each run.
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
