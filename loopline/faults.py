"""Fixed kill points for the reliability suite: `LOOPLINE_KILL_AT=NAME` (or `NAME:N`, the Nth time the process
reaches it) makes `kill_point(NAME)` SIGKILL its own process there, as a preemption or an OOM kill would.
`LOOPLINE_KILL_SIGNAL=STOP` sends SIGSTOP instead: the process freezes at that exact point (its peers block on
it) until the test sends SIGCONT, so a test can act on another process at a known step.

The points sit on the lines where a crash is most harmful (between the writes of one batch, just before and
just after a commit). Unset, a point costs one dict lookup. Tests set it in a child process's environment;
nothing in the product sets it.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get("LOOPLINE_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if os.environ.get("LOOPLINE_KILL_SIGNAL") == "STOP":
        if _hits[name] == int(nth or 1):  # once: after SIGCONT the process runs on
            os.kill(os.getpid(), signal.SIGSTOP)
    elif _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
