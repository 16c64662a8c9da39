"""Training across nodes: two torchrun agents on 127.0.0.1 acting as two nodes (`training.nodes: 2`, one gloo
process each), checkpoints on a real S3 endpoint (moto_server) as their shared storage. SIGTERM to one
node's agent at a random step stops both nodes with a checkpoint; a single process on that checkpoint is
refused (world size 2 -> 1); the rerun, as two `python -m loopline.train.standalone` processes, resumes there
and ends bit-identical to an uninterrupted run (on a local lake)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loopline.storage.lake import Lake
from loopline.train.preemption import Preempted
from loopline.train.topology import WorldSizeChanged
from tests.train_nodes import (
    CHECKPOINT_EVERY,
    ENV,
    MAX_STEPS,
    free_port,
    has_pending,
    is_stopped,
    node_args,
    node_processes,
    reference_sha,
    run_nodes,
    wait_until,
    write_arrays,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
BUCKET = "loopline-multinode"


def test_sigterm_to_one_node_stops_every_rank_with_a_checkpoint_and_the_rerun_is_exact(
    tmp_path, monkeypatch, moto_s3
):
    reference = reference_sha()
    arrays = write_arrays(tmp_path / "arrays")
    rng = random.Random()
    step = rng.choice([n for n in range(11, MAX_STEPS - 10) if n % CHECKPOINT_EVERY])
    target = rng.choice([0, 1])
    s3 = {
        **ENV,
        "LOOPLINE_LAKE_URI": f"s3://{BUCKET}/{tmp_path.name}",
        "AWS_ENDPOINT_URL": moto_s3["endpoint_url"],
        "AWS_REGION": moto_s3["region"],
        "AWS_ACCESS_KEY_ID": moto_s3["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": moto_s3["secret_access_key"],
    }
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOOPLINE_LAKE_BLOCK", raising=False)
    lake = Lake.from_env(str(tmp_path))
    client = lake.s3_client()
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("LOOPLINE_KILL_AT", f"train.step:{step}")  # every worker freezes itself at `step` ...
    monkeypatch.setenv("LOOPLINE_KILL_SIGNAL", "STOP")

    def sigterm_one_agent() -> (
        None
    ):  # ... then node `target`'s agent gets SIGTERM, as a pod eviction sends it
        nodes = node_processes()
        assert set(nodes) == {0, 1}, nodes
        wait_until(lambda: all(is_stopped(n["worker"]) for n in nodes.values()), f"both ranks at step {step}")
        nodes[target]["agent"].send_signal(signal.SIGTERM)
        wait_until(
            lambda: has_pending(nodes[target]["worker"], signal.SIGTERM), "the agent passing SIGTERM on"
        )
        for n in nodes.values():
            n["worker"].resume()

    stopped = run_nodes(arrays, lake.root, during=sigterm_one_agent)
    stop_step = -(-step // CHECKPOINT_EVERY) * CHECKPOINT_EVERY  # the ranks agree at the next multiple of 10
    for rank, outcome in enumerate(stopped):
        assert isinstance(outcome, Preempted), f"node {rank}: {outcome!r}"
        assert outcome.step == stop_step, (rank, outcome.step, step)
    written = [uri for uri in lake.list(lake.uri("checkpoints", "mn")) if uri.endswith(".pt")]
    assert written and written[-1].endswith(f"/step-{stop_step:08d}.pt"), written  # on S3, by rank 0
    monkeypatch.delenv("LOOPLINE_KILL_AT")

    # the same run key on one process: refused, naming both world sizes, nothing trained or written
    refused = run_nodes(arrays, lake.root, nodes=1)[0]
    assert isinstance(refused, WorldSizeChanged), refused
    assert "world size of 2 process(es), and this attempt has 1" in str(refused)
    assert [uri for uri in lake.list(lake.uri("checkpoints", "mn")) if uri.endswith(".pt")] == written

    # the rerun: one `python -m loopline.train.standalone` per node, as on two machines, each told its rank
    # and node 0's address in its environment
    port = free_port()
    env = {**s3, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loopline.train.standalone",
                *node_args(arrays, lake.root, rank, port, rank_from_env=True),
            ],
            cwd=REPO,
            env={**env, "LOOPLINE_NODE_RANK": str(rank), "LOOPLINE_RDZV_ENDPOINT": f"127.0.0.1:{port}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["role"] for r in results] == ["leader", "follower"]
    for r in results:
        assert r["resumed_from_step"] == stop_step and r["steps"] == MAX_STEPS and r["devices"] == 2
        assert r["state_sha256"] == reference, "the resumed run is not bit-identical to the uninterrupted one"


def _resume_rank(rank: int, port: int, roots: list[str], out: str) -> None:
    """One rank of a two-process group whose checkpoint folders differ (a disk each node keeps to itself)."""
    import torch
    import torch.distributed as dist

    from loopline.train.checkpoint import CheckpointStore
    from loopline.train.topology import load_agreed_checkpoint

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    lake = Lake(root=roots[rank])
    try:
        load_agreed_checkpoint(
            CheckpointStore(lake, lake.uri("checkpoints", "m", "k")),
            rank=rank,
            distributed=True,
            device=torch.device("cpu"),
        )
        outcome = "resumed"
    except Exception as exc:  # noqa: BLE001 - reported to the test
        outcome = f"{type(exc).__name__}: {exc}"
    Path(f"{out}-{rank}").write_text(outcome)
    dist.destroy_process_group()


def test_nodes_that_do_not_share_checkpoint_storage_stop_with_a_clear_error(tmp_path):
    """Rank 0 picks the checkpoint; a rank that cannot read it fails every rank alike, naming the file."""
    import torch.multiprocessing as mp

    from loopline.train.checkpoint import CheckpointStore

    roots = [str(tmp_path / "node-0-disk"), str(tmp_path / "node-1-disk")]
    lake = Lake(root=roots[0])
    CheckpointStore(lake, lake.uri("checkpoints", "m", "k")).save(
        {"model": {}, "optimizer": {}, "step": 20, "rng": {}, "data_order": {"world_size": 2}}
    )
    mp.spawn(_resume_rank, args=(free_port(), roots, str(tmp_path / "out")), nprocs=2, join=True)
    outcomes = [(tmp_path / f"out-{r}").read_text() for r in (0, 1)]
    assert all(o.startswith("ConfigError") for o in outcomes), outcomes
    assert "rank 1 cannot read" in outcomes[1] and "step-00000020.pt" in outcomes[1]
    assert "every node must see the same checkpoint storage" in outcomes[0]
