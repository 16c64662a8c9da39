"""Flow runs end without waiting on their heartbeat thread's sleep (imported by every module with a flow).

Prefect's sync flow engine sends a flow run's heartbeats (every 180 s by default) from a daemon thread that
sleeps in one-second steps, and at the run's end it sets the thread's stop event and *joins* it: every flow
run's end waits up to a second for that sleep to finish, half a second on average. Measured on the lifecycle
(bench/lifecycle.py): 1.5 s of its 2.1 s orchestration overhead with two flow runs (the loop and its
promotion), and most of an unchanged rerun's.

Prefect's async engine already leaves the thread to stop on its own (`join_on_exit=False`); this makes the
sync engine do the same. The heartbeats themselves are unchanged: same interval, same events, and no
heartbeat after the run's end (the thread checks its stop event before each one and stops at its next
one-second step). Installed once per process, on Prefect's module, only where `_send_heartbeats` still has
the `join_on_exit` switch; a Prefect without it is left as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import prefect.flow_engine as _engine


def install() -> bool:
    """Make the sync flow engine stop its heartbeat thread without joining it. Idempotent; returns whether
    Prefect's engine now ends runs that way."""
    original = _engine._send_heartbeats
    if getattr(original, "loopline_unjoined", False):
        return True
    if "join_on_exit" not in inspect.signature(original).parameters:
        return False

    @contextmanager
    def _send_heartbeats(engine, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield

    _send_heartbeats.loopline_unjoined = True  # type: ignore[attr-defined]
    _send_heartbeats.__wrapped__ = original  # type: ignore[attr-defined]
    _engine._send_heartbeats = _send_heartbeats
    return True


install()
# every module with a flow imports this one: the place for what every flow-run process needs
from flows.console import strip_user_error_tracebacks  # noqa: E402

strip_user_error_tracebacks()
