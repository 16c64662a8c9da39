"""`python -m loopline.serving --model M [...]`: the server without the loopline CLI (no typer, no flows).

`loopline serve` (flows/cli.py) calls the same `run_server`; this entry point is what tests, benchmarks and
container images run. Options override the ServingConfig defaults (`loopline.config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from loopline.config import ServingConfig, default_home
from loopline.errors import LooplineError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loopline.serving", description="Serve models:/M@champion over HTTP."
    )
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--challenger-weight", type=float, default=None, help="share of requests for @challenger")
    p.add_argument(
        "--shadow", action="store_true", help="score @challenger beside the champion, never return it"
    )
    p.add_argument("--poll-seconds", type=float, default=None, help="registry poll interval (0: off)")
    p.add_argument("--max-batch-size", type=int, default=None, help="rows per model call")
    p.add_argument("--max-wait-ms", type=float, default=None, help="batching wait for requests being parsed")
    p.add_argument("--no-inference-log", action="store_true", help="do not write predictions/M")
    p.add_argument("--log-flush-seconds", type=float, default=None, help="inference-log write cadence")
    p.add_argument(
        "--log-write-attempts",
        type=int,
        default=None,
        help="inference-log tries before the dead-letter table",
    )
    p.add_argument("--log-retry-seconds", type=float, default=None, help="first inference-log retry delay")
    p.add_argument(
        "--max-inflight-requests", type=int, default=None, help="scoring requests at once (past it: 503)"
    )
    p.add_argument("--max-queue-rows", type=int, default=None, help="rows waiting per model (past it: 503)")
    p.add_argument("--max-shadow-tasks", type=int, default=None, help="shadow scorings in flight")
    p.add_argument("--max-connections", type=int, default=None, help="uvicorn's connection ceiling")
    p.add_argument("--retry-after-seconds", type=int, default=None, help="Retry-After of a 503")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--home", default=None, help="LOOPLINE_HOME (default $LOOPLINE_HOME or ./.loopline)")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<home>/mlflow.db)"
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    overrides = {
        "host": args.host,
        "port": args.port,
        "challenger_weight": args.challenger_weight,
        "poll_seconds": args.poll_seconds,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "log_flush_seconds": args.log_flush_seconds,
        "log_write_attempts": args.log_write_attempts,
        "log_retry_seconds": args.log_retry_seconds,
        "max_inflight_requests": args.max_inflight_requests,
        "max_queue_rows": args.max_queue_rows,
        "max_shadow_tasks": args.max_shadow_tasks,
        "max_connections": args.max_connections,
        "retry_after_seconds": args.retry_after_seconds,
        "device": args.device,
    }
    data = {k: v for k, v in overrides.items() if v is not None}
    if args.shadow:
        data["shadow"] = True
    if args.no_inference_log:
        data["inference_log"] = False
    return ServingConfig(**data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOOPLINE_SERVING_LOG_LEVEL", "WARNING").upper())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from loopline.serving import run_server

    try:
        run_server(
            args.model,
            config_from_args(args),
            tracking_uri=args.tracking_uri,
            home=args.home or default_home(),
        )
    except LooplineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
