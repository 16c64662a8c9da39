"""A small thread-safe LRU (below every stage: release caches scores and test sets in it, packaging the loader
gate's verdicts of one decision) for values keyed by immutable things (model versions, Delta versions, files):
entries never go stale, so there is no expiry, only a size bound."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ComputeCache:
    """`get_or_compute(key, compute)`: one computation per key even when threads ask at once."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        self.key_locks: dict[Any, threading.Lock] = {}

    def get_or_compute(self, key, compute):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one computation per key even when threads ask at once
            with self.lock:
                if key in self.data:
                    return self.data[key]
            value = compute()
            with self.lock:
                self.data[key] = value
                while len(self.data) > self.size:
                    self.data.popitem(last=False)
                self.key_locks.pop(key, None)
            return value

    def clear(self) -> None:
        with self.lock:
            self.data.clear()
