"""Work that overlaps the caller's: a daemon thread whose result or exception comes back through a Future.

A daemon thread, not an executor's: an executor's threads are not daemons, and one stuck in a hung load would
hold the interpreter's exit (promotion's infra validation has its own timeout; the thread only waits on it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


def in_background(work: Callable[[], Any], name: str) -> Future:
    """Run `work()` in a daemon thread named `name`; the caller meets its result or exception at
    `future.result()`."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # raised again in the caller, at future.result()
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
