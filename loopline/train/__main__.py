"""`python -m loopline.train --dataset D [--model M] [--config F] [--set k=v ...] [--fresh] [--json]`

Training without Prefect (the `loopline train` command goes through the Prefect flow). Exit codes:
0 trained, 2 bad input, 143 preempted after a checkpoint (run it again to resume), 1 anything else.
The lake comes from the environment (`Lake.from_env`); with `LOOPLINE_LAKE_BLOCK` set, only from a parent
that resolved the block and passed its lake on (blocks/lake.py), else exit 2: never another lake.
With `training.nodes: N`, run this same command (and the same --features-version) on each of the N machines,
with LOOPLINE_NODE_RANK (or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX) and LOOPLINE_RDZV_ENDPOINT set
(loopline.train.topology): node 0 tracks the run in MLflow and registers the model, the others only train.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopline.train", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="dataset D: trains on features/D")
    parser.add_argument("--model", default=None, help="registered model name (default: the dataset name)")
    parser.add_argument("--config", default=None, help="LifecycleConfig YAML file")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value override")
    parser.add_argument(
        "--fresh", action="store_true", help="delete this run key's checkpoints and start over"
    )
    parser.add_argument("--features-version", type=int, default=None, help="Delta version of features/D")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument(
        "--progress",
        action="store_true",
        help='also print each progress report as a JSON line {"progress": {...}} (read by the k8s launcher)',
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from loopline.config import load_config
    from loopline.errors import LooplineError
    from loopline.storage.lake import Lake

    try:
        cfg = load_config(args.config, args.sets)
        lake = Lake.from_env(cfg.home)  # before the heavy imports: a lake it must not guess fails fast
        from loopline.train import run_training

        result = run_training(
            cfg,
            args.dataset,
            lake=lake,
            model_name=args.model,
            fresh=args.fresh,
            features_version=args.features_version,
            on_progress=_print_progress if args.progress else None,
        )
    except LooplineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        return exc.exit_code
    if args.json:
        print(json.dumps(result, default=str))
    elif "model_uri" in result:
        print(f"registered {result['model_uri']} ({result['steps']} steps)")
    else:  # a follower node: node 0 registers
        print(f"node {result['node_rank']} of {result['nodes']}: trained {result['steps']} steps")
    return 0


def _print_progress(payload: dict) -> None:
    print(json.dumps({"progress": payload}, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
