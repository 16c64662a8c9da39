"""`python -m loopline.train.standalone --arrays DIR [--name N] [--task T] [--config F] [--set k=v ...]`

The training loop on plain arrays with torch alone (plus numpy, pydantic and PyYAML for the config): no
Prefect, no MLflow, no Delta, so a GPU box with only a CUDA torch can run it. DIR holds X_train.npy and
y_train.npy (float32 features; labels 0/1 for binary, class ids for multiclass, floats for regression), and
optionally X_valid.npy / y_valid.npy. Everything else is the real path: one process, DDP over
`training.devices`, or `training.nodes` machines each running this same command (loopline.train.topology:
LOOPLINE_NODE_RANK, LOOPLINE_RDZV_ENDPOINT); checkpoints in the lake (LOOPLINE_LAKE_URI or --lake: a local
folder or s3://bucket/prefix) under checkpoints/<name>/<run key>, so a rerun resumes exactly.

Prints one JSON line (`--json`) or a summary: steps, resumed_from_step, state_sha256, samples_per_s ...
Exit codes: 0 trained, 2 bad input, 143 preempted after a checkpoint (run it again to resume), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("loopline.train.standalone")
ARRAY_NAMES = ("X_train", "y_train", "X_valid", "y_valid")


def load_arrays(folder: Path, task: str, n_classes: int | None):
    """The split from DIR, and a fingerprint of its bytes (part of the run key: other data, another run)."""
    from loopline.errors import ConfigError
    from loopline.train.loop import TrainingData

    arrays: dict[str, np.ndarray] = {}
    digest = hashlib.sha256()
    for name in ARRAY_NAMES:
        path = folder / f"{name}.npy"
        if not path.exists():
            if name in ("X_train", "y_train"):
                raise ConfigError(
                    f"--arrays {folder}: {path.name} is missing (X_train.npy and y_train.npy are needed)"
                )
            continue
        value = np.ascontiguousarray(np.load(path))
        digest.update(f"{name}{value.dtype}{value.shape}".encode())
        digest.update(value.view(np.uint8).reshape(-1).data)
        arrays[name] = value
    if task == "multiclass" and n_classes is None:
        n_classes = int(arrays["y_train"].max()) + 1
    if task == "binary":
        n_classes = 2
    data = TrainingData(
        X_train=arrays["X_train"].astype(np.float32, copy=False),
        y_train=arrays["y_train"],
        task=task,
        X_valid=arrays["X_valid"].astype(np.float32, copy=False) if "X_valid" in arrays else None,
        y_valid=arrays.get("y_valid"),
        n_classes=n_classes,
    )
    return data, digest.hexdigest()[:16]


def train_standalone(args: argparse.Namespace) -> dict[str, Any]:
    from loopline.config import load_config
    from loopline.storage.lake import Lake
    from loopline.train.checkpoint import CheckpointStore
    from loopline.train.runkey import code_version, compute_run_key
    from loopline.train.topology import resolve_topology

    cfg = load_config(args.config, args.sets)
    tcfg = cfg.training
    lake = Lake.from_env(cfg.home)
    if args.lake:
        lake = dataclasses.replace(lake, root=args.lake)
    data, fingerprint = load_arrays(Path(args.arrays), args.task, args.n_classes)
    code = code_version()
    run_key = compute_run_key(
        tcfg, dataset=f"arrays-{fingerprint}", model_name=args.name, features_version=0, code=code
    )
    topology = resolve_topology(tcfg, run_key)
    store = CheckpointStore(lake, lake.uri("checkpoints", args.name, run_key), tcfg.keep_last_checkpoints)
    if args.fresh and topology.node_rank == 0:  # node 0 only, before the rendezvous that needs it
        log.info("--fresh: deleted %d checkpoint(s) of run key %s", store.clear(), run_key)
    meta = {
        "config": tcfg.model_dump(mode="json"),
        "run_key": run_key,
        "code_version": code,
        "arrays": fingerprint,
    }

    def on_progress(payload: dict[str, Any]) -> None:
        log.info(
            "step %s/%s loss %.5f", payload.get("step"), payload.get("total_steps"), payload.get("loss", 0)
        )

    if topology.world_size > 1:
        from loopline.train.node import node_result, train_node

        outcome = train_node(
            cfg,
            data,
            lake=lake,
            store=store,
            topology=topology,
            checkpoint_meta=meta,
            want_weights=bool(args.weights),
            fresh=args.fresh,
            on_progress=on_progress,
        )
        result = node_result(outcome, topology, run_key)
        state = outcome.state_dict
    else:
        from loopline.train.loop import resolve_device, train_loop
        from loopline.train.outcome import TrainOutcome
        from loopline.train.preemption import PreemptionWatch

        with PreemptionWatch(
            spot_notice_url=tcfg.spot_notice_url,
            spot_notice_file=tcfg.spot_notice_file,
            poll_seconds=tcfg.spot_poll_seconds,
        ) as watch:
            loop = train_loop(
                tcfg,
                data,
                store=store,
                device=resolve_device(tcfg.device),
                meta=meta,
                watch=watch,
                on_progress=on_progress,
            )
        from loopline.train.node import node_result

        result = node_result(TrainOutcome.from_loop(loop), topology, run_key)
        state = loop.state_dict
    if args.weights and state is not None:
        import torch

        torch.save(state, args.weights)
        result["weights"] = args.weights
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loopline.train.standalone", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--arrays", required=True, help="folder with X_train.npy, y_train.npy [, X_valid.npy, y_valid.npy]"
    )
    parser.add_argument("--task", default="binary", choices=("binary", "multiclass", "regression"))
    parser.add_argument(
        "--n-classes", type=int, default=None, help="multiclass: number of classes (default: max label + 1)"
    )
    parser.add_argument("--name", default="standalone", help="checkpoints go to checkpoints/NAME/<run key>")
    parser.add_argument(
        "--lake", default=None, help="lake root (local folder or s3://...); default LOOPLINE_LAKE_URI"
    )
    parser.add_argument("--config", default=None, help="LifecycleConfig YAML file")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value override")
    parser.add_argument(
        "--fresh", action="store_true", help="delete this run key's checkpoints and start over"
    )
    parser.add_argument("--weights", default=None, help="write the final state dict here (torch.save)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from loopline.errors import LooplineError

    try:
        result = train_standalone(args)
    except LooplineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        return exc.exit_code
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(
            f"node {result['node_rank']}/{result['nodes']}: {result['steps']} steps (resumed from "
            f"{result['resumed_from_step']}), state {result['state_sha256'][:12]}, {result['samples_per_s']:.0f} samples/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
