"""Where the processes of one training run live: `training.nodes` machines x `training.devices` each.

One node (the default) runs torchrun `--standalone`. Several nodes each run the same command (`python -m
loopline.train ...`, or `python -m loopline.train.standalone ...` on plain arrays); each starts one torchrun
agent, and the agents meet in a c10d rendezvous that node 0 hosts:

    torchrun --nnodes N --node-rank R --nproc-per-node D --rdzv-backend c10d --rdzv-endpoint HOST:PORT
             --rdzv-id loopline-<run key> --rdzv-conf join_timeout=..,read_timeout=..,is_host=<R == 0>

What differs between nodes comes from the environment (first match wins):
- node rank: `LOOPLINE_NODE_RANK`, then `training.node_rank`, then `JOB_COMPLETION_INDEX` (a Kubernetes
  Indexed Job), then `PET_NODE_RANK` (Kubeflow Trainer's torch runtime);
- rendezvous endpoint (node 0's address; node 0 hosts the store there): `LOOPLINE_RDZV_ENDPOINT`, then
  `training.rdzv_endpoint`, then `PET_MASTER_ADDR:PET_MASTER_PORT`; port 29400 when left out;
- `LOOPLINE_RDZV_ID` overrides the rendezvous id (default `loopline-<run key>`: nodes that disagree on the
  run key, e.g. on the features version, never meet; the timeout error says so).

The run id ties the nodes to one run key, so a rerun of the same key on the same nodes resumes. The rendezvous
waits `training.rdzv_join_timeout_seconds` for the last node and keeps dialling node 0's store for
`training.rdzv_timeout_seconds`: both default to 30 min because a fresh GPU node may spend that long pulling
a CUDA image. torchrun ranks the agents itself (`--node-rank` is only a hint to the c10d backend), so the
process with global rank 0, which writes the checkpoints, can live on any node; every node's parent reads
the outcome of its own first process instead.

A checkpoint records the world size (nodes x devices) that wrote it. The batch order and the gradient
average depend on it, so a run continued on another world size would match no uninterrupted run: such a
resume is refused (`WorldSizeChanged`), naming both sizes and the way out. Every rank resumes from the one
checkpoint rank 0 picks (`load_agreed_checkpoint`); nodes that do not share the checkpoint storage stop with an
error instead of resuming from different steps.

Checkpoints stay one file written by global rank 0 (not torch.distributed.checkpoint shards): under DDP every
rank holds the whole, identical state, so the bytes to write are the same whoever writes them; one file keeps
the all-or-nothing write (local rename, one S3 PUT) the resume logic relies on, and the write runs in the
background. bench/train_scale.py measures it against DCP with two ranks writing in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loopline.config import TrainingConfig
from loopline.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from loopline.train.checkpoint import CheckpointStore, LoadedCheckpoint

DEFAULT_RDZV_PORT = 29400  # torchrun's own default for the c10d backend
NODE_RANK_VARIABLES = ("LOOPLINE_NODE_RANK", "training.node_rank", "JOB_COMPLETION_INDEX", "PET_NODE_RANK")
ENDPOINT_VARIABLES = ("LOOPLINE_RDZV_ENDPOINT", "training.rdzv_endpoint", "PET_MASTER_ADDR:PET_MASTER_PORT")


class WorldSizeChanged(ConfigError):
    """A resume on another number of processes than the run's checkpoints were written with."""


@dataclass(frozen=True)
class Topology:
    nodes: int
    devices: int
    node_rank: int = 0
    endpoint: str | None = None  # HOST:PORT of node 0; None on one node
    rdzv_id: str = ""
    join_timeout_s: int = 1800
    read_timeout_s: int = 1800

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def describe(self) -> str:
        where = f" (rendezvous {self.rdzv_id} at {self.endpoint})" if self.multi_node else ""
        return f"node {self.node_rank} of {self.nodes}, {self.devices} process(es) per node{where}"


def resolve_topology(
    tcfg: TrainingConfig, run_key: str, environ: Mapping[str, str] | None = None
) -> Topology:
    """This node's place in the run, from the config and the environment (module docstring)."""
    env = os.environ if environ is None else environ
    if tcfg.nodes == 1:
        explicit = _node_rank(tcfg, env, platform=False)
        if explicit not in (None, 0):
            raise ConfigError(
                f"node rank {explicit} (from {explicit_source(tcfg, env)}) but training.nodes is 1: "
                "set training.nodes to the number of machines"
            )
        return Topology(nodes=1, devices=tcfg.devices, rdzv_id=f"loopline-{run_key}")
    node_rank = _node_rank(tcfg, env, platform=True)
    if node_rank is None:
        raise ConfigError(
            f"training.nodes is {tcfg.nodes} but this node's rank is unknown: set one of "
            f"{', '.join(NODE_RANK_VARIABLES)} (0 on the machine that hosts the rendezvous)"
        )
    if node_rank >= tcfg.nodes:
        raise ConfigError(
            f"node rank {node_rank} (from {explicit_source(tcfg, env) or 'the environment'}) is out of range "
            f"for training.nodes {tcfg.nodes}: ranks are 0..{tcfg.nodes - 1}"
        )
    return Topology(
        nodes=tcfg.nodes,
        devices=tcfg.devices,
        node_rank=node_rank,
        endpoint=_endpoint(tcfg, env),
        rdzv_id=env.get("LOOPLINE_RDZV_ID") or f"loopline-{run_key}",
        join_timeout_s=max(1, round(tcfg.rdzv_join_timeout_seconds)),
        read_timeout_s=max(1, round(tcfg.rdzv_timeout_seconds)),
    )


def torchrun_args(topology: Topology) -> list[str]:
    """torchrun's options for this node (the module and its arguments follow)."""
    common = [f"--nproc-per-node={topology.devices}", "--max-restarts=0"]  # restarts: the task's retries
    if not topology.multi_node:
        return ["--standalone", *common]  # one node: a local rendezvous on a free port
    conf = (
        f"join_timeout={topology.join_timeout_s},read_timeout={topology.read_timeout_s},"
        f"is_host={int(topology.node_rank == 0)}"  # node 0 hosts the store; no DNS guess about who is local
    )
    return [
        f"--nnodes={topology.nodes}",
        f"--node-rank={topology.node_rank}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={topology.endpoint}",
        f"--rdzv-id={topology.rdzv_id}",
        f"--rdzv-conf={conf}",
        *common,
    ]


def check_resume_world_size(checkpoint: Mapping[str, Any], world_size: int, uri: str) -> None:
    """Refuse to continue an unfinished run on another world size (module docstring). A finished checkpoint
    is only read back, never trained on, so any world size may return it."""
    written = int((checkpoint.get("data_order") or {}).get("world_size", 1))
    if written == world_size or checkpoint.get("finished"):
        return
    raise WorldSizeChanged(
        f"checkpoint {uri} (step {checkpoint.get('step')}) was written by a world size of {written} "
        f"process(es), and this attempt has {world_size} (training.nodes x training.devices). The batch order "
        f"and the gradient average depend on the world size, so resuming would match no uninterrupted run. "
        f"Run it again with {written} process(es) in all, or pass --fresh to start this run key over."
    )


def load_agreed_checkpoint(
    store: CheckpointStore | None, *, rank: int, distributed: bool, device: torch.device
) -> LoadedCheckpoint | None:
    """The newest good checkpoint, the same one on every rank. Rank 0 picks it (skipping corrupt files) and
    the others load that step: ranks listing storage on their own could pick different steps (a node's stale
    listing, a file one node cannot read) and train on, silently apart. A rank that cannot read rank 0's
    choice (checkpoints on a disk the nodes do not share) fails every rank with an error naming the file."""
    if not distributed:
        return store.load_latest(map_location="cpu") if store is not None else None
    import torch
    import torch.distributed as dist

    from loopline.train.checkpoint import LoadedCheckpoint

    loaded = store.load_latest(map_location="cpu") if store is not None and rank == 0 else None
    choice = torch.tensor([loaded.step if loaded is not None else -1], dtype=torch.int64, device=device)
    dist.broadcast(choice, src=0)
    step, problem = int(choice.item()), None
    if rank != 0 and step >= 0 and store is not None:
        uri = store.uri_for(step)
        try:
            loaded = LoadedCheckpoint(uri=uri, step=step, state=store.load(uri, map_location="cpu"))
        except ValueError as exc:
            problem = f"rank {rank} cannot read {uri}, which rank 0 resumes from ({exc})"
    ok = torch.tensor([0 if problem else 1], dtype=torch.int64, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if int(ok.item()) == 0:
        raise ConfigError(
            (problem or f"another rank cannot read checkpoint step {step} that rank 0 resumes from")
            + ": every node must see the same checkpoint storage (an S3 lake, or one shared filesystem)"
        )
    return loaded


def check_launcher(tcfg: TrainingConfig) -> None:
    """`run_training` is the local launcher: this process is one node. Another launcher starts the nodes as
    pods from the train flow (whose pods run with launcher 'local'); reaching here with it would train in
    the wrong place, silently."""
    if tcfg.launcher != "local":
        raise ConfigError(
            f"training.launcher is {tcfg.launcher!r}, but this process trains here, as one node: start it "
            "through the train flow (`loopline train`), which launches the nodes on Kubernetes, or set "
            "training.launcher to 'local' to run one `python -m loopline.train --features-version V ...` per node"
        )


def explicit_source(tcfg: TrainingConfig, env: Mapping[str, str]) -> str | None:
    if env.get("LOOPLINE_NODE_RANK"):
        return "LOOPLINE_NODE_RANK"
    if tcfg.node_rank is not None:
        return "training.node_rank"
    return None


def _node_rank(tcfg: TrainingConfig, env: Mapping[str, str], *, platform: bool) -> int | None:
    sources: list[tuple[str, Any]] = [
        ("LOOPLINE_NODE_RANK", env.get("LOOPLINE_NODE_RANK")),
        ("training.node_rank", tcfg.node_rank),
    ]
    if platform:
        sources += [(name, env.get(name)) for name in ("JOB_COMPLETION_INDEX", "PET_NODE_RANK")]
    for name, value in sources:
        if value is None or value == "":
            continue
        try:
            rank = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} is {value!r}: a node rank is a whole number >= 0") from None
        if rank < 0:
            raise ConfigError(f"{name} is {rank}: a node rank is a whole number >= 0")
        return rank
    return None


def _endpoint(tcfg: TrainingConfig, env: Mapping[str, str]) -> str:
    if env.get("LOOPLINE_RDZV_ENDPOINT"):
        name, value = "LOOPLINE_RDZV_ENDPOINT", env["LOOPLINE_RDZV_ENDPOINT"]
    elif tcfg.rdzv_endpoint:
        name, value = "training.rdzv_endpoint", tcfg.rdzv_endpoint
    elif env.get("PET_MASTER_ADDR"):
        name = "PET_MASTER_ADDR:PET_MASTER_PORT"
        value = env["PET_MASTER_ADDR"] + (f":{env['PET_MASTER_PORT']}" if env.get("PET_MASTER_PORT") else "")
    else:
        raise ConfigError(
            f"training.nodes is {tcfg.nodes} but no rendezvous endpoint is set: set one of "
            f"{', '.join(ENDPOINT_VARIABLES)} to HOST[:PORT] of node 0"
        )
    host, sep, port = value.strip().rpartition(":")
    if not sep or "]" in port:  # no port (or a bare IPv6 address in brackets)
        host, port = value.strip(), str(DEFAULT_RDZV_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{name} is {value!r}: expected HOST[:PORT] of node 0, e.g. trainer-0.trainer:29400"
        )
    return f"{host}:{int(port)}"
