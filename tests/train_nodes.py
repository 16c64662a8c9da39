"""Two torchrun agents on 127.0.0.1, each acting as one node of a `training.nodes: 2` run (gloo, CPU).

Each node is `loopline.train.standalone` (the per-node entry on plain arrays) called in a thread of the test
process, its topology given per node by `training.node_rank` / `training.rdzv_endpoint`: the agents and
workers are real processes (`python -m torch.distributed.run ... -m loopline.train.worker`), only the
per-node parent shares the test's interpreter (which has torch imported already). `node_processes` finds
them, so a test can freeze, signal or kill one node's agent at a known step: with
`LOOPLINE_KILL_AT=train.step:N` and `LOOPLINE_KILL_SIGNAL=STOP` every worker freezes itself at step N.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MAX_STEPS = 60
CHECKPOINT_EVERY = 10  # = DDP_PREEMPT_SYNC_STEPS: the nodes agree on a stop at multiples of 10
SETS = [
    f"training.max_steps={MAX_STEPS}",
    "training.batch_size=32",
    "training.hidden_sizes=[16]",
    "training.dropout=0.1",  # dropout draws from every rank's RNG: a resume must restore it
    f"training.checkpoint_every_steps={CHECKPOINT_EVERY}",
    "training.keep_last_checkpoints=2",
    "training.eval_every_steps=25",
    "training.log_every_steps=20",
    "training.device=cpu",
    "training.seed=7",
]
ENV = {
    "LOOPLINE_CODE_VERSION": "multinode-test",  # other edits to the tree must not change the run key mid-test
    "OMP_NUM_THREADS": "1",  # the same float sums in every process
}


def write_arrays(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 6)).astype(np.float32)
    y = (X @ rng.standard_normal(6) > 0).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in {
        "X_train": X[:480],
        "y_train": y[:480],
        "X_valid": X[480:],
        "y_valid": y[480:],
    }.items():
        np.save(folder / f"{name}.npy", value)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_args(
    arrays: Path,
    lake: Path | str,
    node_rank: int,
    port: int,
    *,
    nodes: int = 2,
    extra=(),
    rank_from_env=False,
) -> list[str]:
    """The command line of one node: `python -m loopline.train.standalone` + these. `rank_from_env`: leave
    the node rank and rendezvous endpoint to LOOPLINE_NODE_RANK / LOOPLINE_RDZV_ENDPOINT."""
    sets = [*SETS, f"training.nodes={nodes}", *extra]
    if nodes > 1 and not rank_from_env:
        sets += [f"training.node_rank={node_rank}", f"training.rdzv_endpoint=127.0.0.1:{port}"]
    args = ["--arrays", str(arrays), "--lake", str(lake), "--name", "mn", "--json"]
    for item in sets:
        args += ["--set", item]
    return args


def run_nodes(
    arrays: Path, lake: Path | str, *, nodes: int = 2, extra=(), during: Callable[[], None] | None = None
) -> list[Any]:
    """Run every node in a thread; returns each node's result dict, or the exception it raised. `during`
    runs in the calling thread while the nodes train."""
    from loopline.train.standalone import train_standalone

    port = free_port()
    results: list[Any] = [None] * nodes

    def node(rank: int) -> None:
        parser_args = _parse(node_args(arrays, lake, rank, port, nodes=nodes, extra=extra))
        try:
            results[rank] = train_standalone(parser_args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            results[rank] = exc

    threads = [threading.Thread(target=node, args=(r,), name=f"node-{r}") for r in range(nodes)]
    for t in threads:
        t.start()
    try:
        if during is not None:
            during()
    except BaseException as exc:
        kill_node_processes()  # a failed check must not leave frozen or orphaned ranks behind
        for t in threads:
            t.join(timeout=180)
        raise AssertionError(f"{exc}; what the nodes returned: {results!r}") from exc
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a node did not finish within 180 s"
    return results


def _parse(argv: list[str]) -> argparse.Namespace:
    from loopline.train.standalone import build_parser

    return build_parser().parse_args(argv)


@functools.cache
def reference_sha() -> str:
    """The uninterrupted two-node run's final state_sha256 (computed once per test session)."""
    folder = Path(tempfile.mkdtemp(prefix="loopline-mn-ref-"))
    with _env(ENV):
        results = run_nodes(write_arrays(folder / "arrays"), folder / "lake")
    for r in results:
        assert isinstance(r, dict), f"the reference run failed: {r!r}"
        assert r["steps"] == MAX_STEPS and r["resumed_from_step"] == 0 and r["devices"] == 2
    assert results[0]["state_sha256"] == results[1]["state_sha256"]  # DDP keeps every rank identical
    return results[0]["state_sha256"]


class _env:
    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


env = _env


# ---- the processes of each node ---------------------------------------------------------------------


def node_processes(timeout_s: float = 120) -> dict[int, dict[str, psutil.Process]]:
    """{node rank: {"agent": torchrun, "worker": its worker}} of the nodes this test process started."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[int, dict[str, psutil.Process]] = {}
        for child in psutil.Process().children(recursive=False):
            try:
                cmd = child.cmdline()
                workers = child.children()
            except psutil.NoSuchProcess:
                continue
            if "torch.distributed.run" not in cmd:
                continue
            rank = next(int(a.split("=")[1]) for a in cmd if a.startswith("--node-rank="))
            if workers:
                found[rank] = {"agent": child, "worker": workers[0]}
                _seen.extend((child, workers[0]))
        if len(found) == 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def kill_node_processes() -> None:
    """SIGKILL the agents and workers this process started (by process, never by name), orphans included."""
    procs = [*_seen, *psutil.Process().children(recursive=True)]
    for proc in procs:
        try:
            if proc.is_running() and any(
                "torch.distributed.run" in a or "loopline.train.worker" in a for a in proc.cmdline()
            ):
                proc.kill()
        except psutil.Error:
            pass
    _seen.clear()


_seen: list[psutil.Process] = []  # every agent and worker node_processes found: an orphan is still ours


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def is_stopped(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def has_pending(proc: psutil.Process, sig: signal.Signals) -> bool:
    """`sig` is queued for `proc` (stopped processes keep their signals pending until SIGCONT)."""
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except FileNotFoundError:
        return False
    masks = [
        int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd", "ShdPnd"))
    ]
    return any(mask & (1 << (int(sig) - 1)) for mask in masks)


def is_gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
