"""Progress of the tasks running in this process, for whoever watches here: the CLI's progress bars.

Tasks call `report(kind, **payload)`; nothing listens in a worker, so there it costs one empty loop. A
listener's failure never reaches the task. Kinds: "ingest.files" (files: how many the source holds),
"ingest.batch" (source, state "start" | "done", and when done rows_in, rows_clean, rows_quarantined,
accepted), "train" (model, step, total_steps, loss, samples_per_s; done at the end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Listener] = []


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call `listener(kind, payload)` for every report made while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def report(kind: str, **payload: Any) -> None:
    for listener in list(_listeners):
        try:
            listener(kind, payload)
        except Exception as exc:  # a progress bar must never fail the work it shows
            logging.getLogger(__name__).debug("progress listener failed: %s", exc)
