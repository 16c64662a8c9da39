"""The order of a parallel ingest: which file's gate may run when, and against which ids of earlier files.

Locally, file k is judged against clean/D as the run's earlier files left it. In parallel (loopline.data.
parallel), k is judged against the run's snapshot S0 plus `run_ids(k)`: the ids of k that an earlier file of the
run holds in clean/D by then. An id x repeated across files has owners o1 < o2 < ... (the files holding it);
x is in clean/D before o_i exactly when an earlier owner committed it clean, which o_(i-1) knows: x is then in
o_(i-1)'s clean rows or in its own `run_ids`. So each file waits only for the previous owner of each of its
repeated ids (`deps`), files sharing no ids run at once, and

    run_ids(k) = ids(k) ∩ ⋃_{j in deps(k)} (clean(j) ∪ run_ids(j))

with clean(j) the gate's clean ids of j when scheduling (`predicted`), and what j's commit really put in
clean/D when checking before k's commit (`committed`): equal unless something changed under the run (a
concurrent writer, a batch that turned out a duplicate); then k is judged again.
"""

from __future__ import annotations

import numpy as np


class GatePlan:
    def __init__(self, ids: list[np.ndarray | None], skip: list[bool]):
        """`ids`: each file's distinct ids (None: unreadable); `skip`: files that need no gate (unreadable,
        or a batch the ledger holds as accepted already: they add nothing to clean/D)."""
        self.n = len(ids)
        self.ids = [np.empty(0) if (i is None or s) else i for i, s in zip(ids, skip, strict=True)]
        self.skip = list(skip)
        self.deps = _previous_owners(self.ids)
        self.dependents = [0] * self.n
        for k in range(self.n):
            for j in self.deps[k]:
                self.dependents[j] += 1
        # per file, sorted ids it leaves in clean/D or found there (None: not known yet)
        self._held: dict[str, list[np.ndarray | None]] = {
            "predicted": [None] * self.n,
            "committed": [None] * self.n,
        }
        self._run_ids: dict[str, list[np.ndarray | None]] = {
            "predicted": [None] * self.n,
            "committed": [None] * self.n,
        }
        for k in range(self.n):
            if self.skip[k]:
                for which in ("predicted", "committed"):
                    self._held[which][k] = self._run_ids[which][k] = self.ids[k][:0]

    def ready(self, k: int) -> bool:
        """k can be judged now: every file it depends on has been judged."""
        return not self.skip[k] and all(self._held["predicted"][j] is not None for j in self.deps[k])

    def run_ids(self, k: int, which: str = "predicted") -> np.ndarray:
        """The ids of k that earlier files of the run leave in clean/D (sorted)."""
        held = [self._held[which][j] for j in self.deps[k]]
        if any(h is None for h in held):
            raise RuntimeError(f"file {k}: a file it depends on has no {which} outcome yet")
        ids = self.ids[k]
        held = [h for h in held if len(h)]  # an empty array may be float64: never mix it into int64 ids
        if not held or not len(ids):
            return ids[:0]
        return ids[np.isin(ids, np.concatenate(held))]

    def judged(self, k: int, run_ids: np.ndarray, clean_ids: np.ndarray | None) -> None:
        """k's gate ran with `run_ids` and staged `clean_ids` (None or empty: nothing goes to clean/D)."""
        self._run_ids["predicted"][k] = run_ids
        self._held["predicted"][k] = _union(run_ids, clean_ids)

    def committed(self, k: int, run_ids: np.ndarray, clean_ids: np.ndarray | None) -> None:
        """k was committed (or failed, or turned out a duplicate: `clean_ids` None)."""
        self._run_ids["committed"][k] = run_ids
        self._held["committed"][k] = _union(run_ids, clean_ids)
        if self._held["predicted"][k] is None:  # a failed file: nothing of it is waited for any more
            self._held["predicted"][k] = self._held["committed"][k]


def _union(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is None or not len(b):
        return a
    return np.union1d(a, b) if len(a) else b


def _previous_owners(ids: list[np.ndarray]) -> list[set[int]]:
    """For each file, the files that hold one of its ids last before it."""
    deps: list[set[int]] = [set() for _ in ids]
    sized = [(k, a) for k, a in enumerate(ids) if len(a)]
    if len(sized) < 2:
        return deps
    values = np.concatenate([a for _, a in sized])
    owners = np.concatenate([np.full(len(a), k, dtype=np.int64) for k, a in sized])
    order = np.argsort(values, kind="stable")  # stable: owners of one id stay in file order
    values, owners = values[order], owners[order]
    same = values[1:] == values[:-1]
    if not same.any():
        return deps
    pairs = np.unique(np.stack([owners[:-1][same], owners[1:][same]], axis=1), axis=0)
    for before, after in pairs.tolist():
        deps[after].add(before)
    return deps
