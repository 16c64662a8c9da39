"""The data plane's allocator: Arrow on glibc's malloc in every process that ingests or builds features
(loopline.data.allocator says why). Each case runs in a fresh interpreter, since the choice is process-wide.
The rest of the suite ingests on that pool: the first ingest_file in a pytest process switches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import json, sys
{setup}
import pyarrow as pa, pyarrow.compute as pc, numpy as np
a = pc.cast(pa.array(np.arange(200_000).astype(str)), pa.int64())  # C++ kernels allocate from the default
print(json.dumps({{"pool": pa.default_memory_pool().backend_name,
                  "mimalloc_bytes": pa.mimalloc_memory_pool().bytes_allocated()}}))
"""


def probe(setup: str, **env: str) -> dict:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX")
    }
    clean.pop("LOOPLINE_ARROW_ALLOCATOR", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**clean, **env, "PYTHONPATH": str(REPO)},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_start_puts_every_arrow_allocation_on_the_system_pool():
    # what flows/cli.main does before anything imports pyarrow: C++ kernels' buffers leave mimalloc too
    got = probe("from loopline.data.allocator import start_process_allocator; start_process_allocator()")
    assert got == {"pool": "system", "mimalloc_bytes": 0}


def test_stage_entry_switches_a_process_that_started_without_it():
    # a user's own worker: pyarrow already imported on mimalloc, then an ingest begins
    got = probe(
        "import pyarrow\nfrom loopline.data.allocator import use_data_plane_allocator; use_data_plane_allocator()"
    )
    assert got["pool"] == "system"


def test_opt_out_and_a_users_own_choice_are_left_alone():
    got = probe(
        "from loopline.data.allocator import start_process_allocator; start_process_allocator()",
        LOOPLINE_ARROW_ALLOCATOR="default",
    )
    assert got["pool"] == "mimalloc"
    got = probe(
        "from loopline.data.allocator import start_process_allocator; start_process_allocator()",
        ARROW_DEFAULT_MEMORY_POOL="jemalloc",
    )
    assert got["pool"] == "jemalloc"


def test_worker_environment_carries_the_allocator(tmp_path, monkeypatch):
    from flows.stack.commands import client_env

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("LOOPLINE_ARROW_ALLOCATOR", raising=False)
    env = client_env(tmp_path, {"prefect_api_url": "http://x", "mlflow_tracking_uri": "http://y"}, None, 5.0)
    assert env["ARROW_DEFAULT_MEMORY_POOL"] == "system" and env["MALLOC_ARENA_MAX"] == "2"
