"""The Prefect server's cyclic garbage collection runs off its event loop (flows/stack/launch.py
`collect_garbage_off_the_loop`): a finaliser that waits for the loop, like a stale sqlite3.Cursor whose reset
waits on a connection that waits for a commit the loop has to run, no longer stops the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCENARIO = r"""
import asyncio, gc, json, sys, threading
from flows.stack.launch import collect_garbage_off_the_loop

if sys.argv[1] == "off-the-loop":
    collect_garbage_off_the_loop()
committed = threading.Event()  # set by the loop: the commit that frees the busy connection
seen = {}

class StaleCursor:  # its reset needs the connection that waits for `committed`
    def __del__(self):
        seen["freed"] = committed.wait(5)
        seen["collector"] = threading.current_thread().name

async def main():
    cursor = StaleCursor()
    cursor.cycle = cursor  # garbage only the cyclic collector can free
    del cursor
    asyncio.get_running_loop().call_later(0.2, committed.set)
    for _ in range(400):  # a request handler allocating on the loop's thread
        junk = [[] for _ in range(2000)]
        await asyncio.sleep(0.005)
        if "freed" in seen:
            break

asyncio.run(main())
print(json.dumps(seen))
"""


def _run(policy: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, policy],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_finaliser_that_waits_for_the_loop_holds_it_only_when_the_loop_collects():
    # the interpreter's default: the loop's own allocation runs the collection, which waits for the loop
    on_the_loop = _run("default")
    assert on_the_loop == {"freed": False, "collector": "MainThread"}
    # the server's: collected in its own thread, while the loop goes on and commits
    assert _run("off-the-loop") == {"freed": True, "collector": "loopline-gc"}
