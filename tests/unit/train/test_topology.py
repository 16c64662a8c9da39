"""Where a run's processes live: node rank and rendezvous from config and environment, the torchrun options
(parsed by torchrun's own parser), the world-size guard on resume, the launcher guard."""

from __future__ import annotations

import pytest

from loopline.config import TrainingConfig
from loopline.errors import ConfigError
from loopline.train.topology import (
    WorldSizeChanged,
    check_launcher,
    check_resume_world_size,
    resolve_topology,
    torchrun_args,
)

KEY = "0123456789abcdef"


def test_one_node_runs_standalone_and_ignores_platform_ranks():
    topo = resolve_topology(TrainingConfig(devices=4), KEY, {"JOB_COMPLETION_INDEX": "3"})
    assert (topo.nodes, topo.node_rank, topo.world_size, topo.multi_node) == (1, 0, 4, False)
    assert torchrun_args(topo) == ["--standalone", "--nproc-per-node=4", "--max-restarts=0"]
    with pytest.raises(ConfigError, match="LOOPLINE_NODE_RANK.*training.nodes is 1"):
        resolve_topology(TrainingConfig(), KEY, {"LOOPLINE_NODE_RANK": "1"})


def test_several_nodes_give_torchrun_a_c10d_rendezvous_it_parses():
    from torch.distributed.run import _parse_rendezvous_config, get_args_parser

    cfg = TrainingConfig(nodes=2, devices=8, rdzv_timeout_seconds=900, rdzv_join_timeout_seconds=2400)
    env = {"LOOPLINE_NODE_RANK": "1", "LOOPLINE_RDZV_ENDPOINT": "trainer-0.trainer"}
    topo = resolve_topology(cfg, KEY, env)
    assert topo.world_size == 16 and topo.endpoint == "trainer-0.trainer:29400"
    args = get_args_parser().parse_args([*torchrun_args(topo), "-m", "loopline.train.worker", "spec.json"])
    assert (args.nnodes, args.node_rank, args.nproc_per_node, args.max_restarts) == ("2", 1, "8", 0)
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == (
        "c10d",
        "trainer-0.trainer:29400",
        f"loopline-{KEY}",
    )
    assert not args.standalone
    conf = _parse_rendezvous_config(args.rdzv_conf)
    assert conf == {"join_timeout": "2400", "read_timeout": "900", "is_host": "0"}  # node 0 alone hosts
    leader = resolve_topology(cfg, KEY, {**env, "LOOPLINE_NODE_RANK": "0"})
    assert "is_host=1" in torchrun_args(leader)[-3]


def test_node_rank_and_endpoint_come_from_the_first_source_that_has_them():
    cfg = TrainingConfig(nodes=4, node_rank=2, rdzv_endpoint="cfg-host:1234")
    assert resolve_topology(cfg, KEY, {}).node_rank == 2
    assert (
        resolve_topology(cfg, KEY, {"LOOPLINE_NODE_RANK": "3"}).node_rank == 3
    )  # the variable beats the file
    bare = TrainingConfig(nodes=4)
    indexed_job = {"JOB_COMPLETION_INDEX": "1", "LOOPLINE_RDZV_ENDPOINT": "job-0.svc:29400"}
    assert resolve_topology(bare, KEY, indexed_job).node_rank == 1
    kubeflow = {"PET_NODE_RANK": "3", "PET_MASTER_ADDR": "tj-node-0-0.tj", "PET_MASTER_PORT": "29500"}
    topo = resolve_topology(bare, KEY, kubeflow)
    assert (topo.node_rank, topo.endpoint) == (3, "tj-node-0-0.tj:29500")
    assert resolve_topology(cfg, KEY, {"LOOPLINE_RDZV_ID": "attempt-2"}).rdzv_id == "attempt-2"
    assert resolve_topology(cfg, KEY, {}).endpoint == "cfg-host:1234"


@pytest.mark.parametrize(
    ("cfg", "env", "message"),
    [
        (
            TrainingConfig(nodes=2),
            {"LOOPLINE_RDZV_ENDPOINT": "h"},
            "rank is unknown: set one of LOOPLINE_NODE_RANK",
        ),
        (TrainingConfig(nodes=2), {"LOOPLINE_NODE_RANK": "0"}, "no rendezvous endpoint"),
        (TrainingConfig(nodes=2), {"LOOPLINE_NODE_RANK": "2", "LOOPLINE_RDZV_ENDPOINT": "h"}, "out of range"),
        (
            TrainingConfig(nodes=2),
            {"JOB_COMPLETION_INDEX": "x", "LOOPLINE_RDZV_ENDPOINT": "h"},
            "JOB_COMPLETION_INDEX is 'x'",
        ),
        (
            TrainingConfig(nodes=2, rdzv_endpoint="h:port"),
            {"LOOPLINE_NODE_RANK": "0"},
            "training.rdzv_endpoint is 'h:port'",
        ),
    ],
)
def test_a_topology_that_cannot_work_is_a_clear_config_error(cfg, env, message):
    with pytest.raises(ConfigError, match=message):
        resolve_topology(cfg, KEY, env)


def test_a_resume_on_another_world_size_is_refused_unless_the_run_had_finished():
    ckpt = {"step": 40, "data_order": {"world_size": 8}, "finished": False}
    check_resume_world_size(ckpt, 8, "s3://b/step-40.pt")
    with pytest.raises(WorldSizeChanged) as info:
        check_resume_world_size(ckpt, 4, "s3://b/step-40.pt")
    text = str(info.value)
    assert "s3://b/step-40.pt" in text and "world size of 8" in text and "this attempt has 4" in text
    assert "--fresh" in text and info.value.exit_code == 2
    check_resume_world_size({**ckpt, "finished": True}, 4, "u")  # nothing left to train: any size reads it


def test_the_train_task_refuses_a_launcher_not_wired_yet():
    check_launcher(TrainingConfig())
    with pytest.raises(ConfigError, match="training.launcher is .kubeflow., but this process trains here"):
        check_launcher(TrainingConfig(launcher="kubeflow"))
