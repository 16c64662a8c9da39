"""The memory allocator the data plane's Arrow buffers come from.

pyarrow allocates from mimalloc by default. The data stage allocates and frees column buffers of tens of MB
per chunk (text read from the source, parsed columns, Parquet pages), and mimalloc maps such large blocks
afresh, page by page, where glibc's malloc reuses them once its mmap threshold has grown past them. Measured
with `python -m bench data_plane` (1M demo rows, ingest + features, a fresh process each, 2 cores): mimalloc
8.6 s wall / 14.5 s CPU, jemalloc 8.0 / 13.5, glibc 7.4 / 12.5, glibc with two arenas 7.1 / 12.0. At 10M
rows: glibc with two arenas from the process's start 67 s / 3.6-3.9 GB peak RSS, mimalloc 80 s / 3.9 GB,
glibc with its default arenas (8 per core) 76 s / 5.5 GB, and glibc capped by mallopt only where the stage
begins 63-66 s / 4.0-5.7 GB (arenas made before the cap keep their free blocks).

Arrow reads ARROW_DEFAULT_MEMORY_POOL once, when it first allocates, and glibc reads MALLOC_ARENA_MAX at
start: `allocator_env()` is what a process should start with. The CLI sets it for the processes it starts
(and Arrow's variable for itself, before it imports pyarrow); `loopline up`'s workers start with it, so every
flow run does. Two arenas for a whole flow run: its threads allocate little at once (torch's intra-op
threads reuse their buffers, data loaders are processes, the model server scores on one thread).
`use_data_plane_allocator()` is the fallback where an ingest or a features build begins in a process started
without them (a user's own worker): Arrow's Python-side pool and the arena cap switched then (Arrow's C++
internals keep part of their allocations on mimalloc). LOOPLINE_ARROW_ALLOCATOR=default leaves it all alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Mapping

OPT_OUT_ENV = "LOOPLINE_ARROW_ALLOCATOR"  # "default": Arrow's own choice (mimalloc), glibc's own arenas
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
ARENAS_ENV = "MALLOC_ARENA_MAX"
MALLOC_ARENAS = 2  # one per core here; glibc's default is 8 per core, each keeping freed blocks of its own
_M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)

_lock = threading.Lock()
_done = False


def _opted_out(environ: Mapping[str, str] | None = None) -> bool:
    return (environ if environ is not None else os.environ).get(OPT_OUT_ENV, "").strip().lower() == "default"


def allocator_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a data-plane process should start with: those `environ` (default: this process's
    environment) does not set already."""
    environ = os.environ if environ is None else environ
    if _opted_out(environ):
        return {}
    wanted = {ARROW_POOL_ENV: "system", ARENAS_ENV: str(MALLOC_ARENAS)}
    return {k: v for k, v in wanted.items() if k not in environ}


def start_process_allocator() -> None:
    """At a process's start, before pyarrow is imported: `allocator_env()` into this process's environment,
    where Arrow and every child process find it (glibc's cap for this process: `use_data_plane_allocator`)."""
    os.environ.update(allocator_env())


def use_data_plane_allocator() -> None:
    """Where an ingest or a features build begins: glibc capped at MALLOC_ARENAS arenas (or the process's own
    MALLOC_ARENA_MAX), and Arrow's pool switched to glibc's unless ARROW_DEFAULT_MEMORY_POOL chose one already.
    Idempotent, process-wide."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        if _opted_out():
            return
        _cap_arenas()
        if os.environ.get(ARROW_POOL_ENV):
            return  # Arrow's default already: the user's choice, or allocator_env's read at Arrow's start
        import pyarrow as pa

        try:
            pa.set_memory_pool(pa.system_memory_pool())
        except NotImplementedError:
            pass


def _cap_arenas() -> None:
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        arenas = int(os.environ.get(ARENAS_ENV) or MALLOC_ARENAS)
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)
    except (ValueError, OSError, AttributeError):
        pass  # no mallopt to call, or a value glibc itself would ignore: the cap is only a memory bound
