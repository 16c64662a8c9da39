"""bench/serving's BentoML peer: the registered model's bundle as a BentoML 1.4 service, set up as BentoML's
docs recommend for a small model: one `@bentoml.api(batchable=True)` endpoint (adaptive batching over the
rows of concurrent requests), `workers` processes, quiet logs.

Runs in the side venv .bench-venvs/bentoml (bentoml pins its own web stack); torch, numpy and loopline come
from loopline's venv through a .pth file that bench/serving writes, so the peer scores with loopline's own
contract check, compiled feature transform and torch module. A batchable BentoML API takes a batchable
argument, so the request is `{"data": [[row values], ...]}`: the rows of the `dataframe_split` body loopline
gets, their column names given once at start-up (`--columns`). Usage (from the repository root):

    .bench-venvs/bentoml/bin/python -m bench._bentoml_peer BUNDLE_DIR --port 8125 --columns a,b,.. \
        [--workers 1] [--max-batch-size 1024] [--max-latency-ms 60000]
"""

from __future__ import annotations

import argparse
import os
import sys

import bentoml

WORKERS = int(os.environ.get("LOOPLINE_BENCH_BENTOML_WORKERS", "1"))
MAX_BATCH = int(os.environ.get("LOOPLINE_BENCH_BENTOML_MAX_BATCH", "1024"))
MAX_LATENCY_MS = int(os.environ.get("LOOPLINE_BENCH_BENTOML_MAX_LATENCY_MS", "60000"))


@bentoml.service(workers=WORKERS, logging={"access": {"enabled": False}})
class LooplinePeer:
    def __init__(self) -> None:
        import torch

        from loopline.serving.model import load_bundle_model

        torch.set_num_threads(1)
        self.model = load_bundle_model(
            os.environ["LOOPLINE_BENCH_BUNDLE"], name="demo", version="1", alias="champion", device="cpu"
        )
        self.columns = os.environ["LOOPLINE_BENCH_COLUMNS"].split(",")

    @bentoml.api(
        route="/invocations", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def invocations(self, data: list) -> list:
        from loopline.serving.protocol import parse_document

        cols = parse_document({"dataframe_split": {"columns": self.columns, "data": data}})
        return self.model.score(self.model.checker.check(cols)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--columns", required=True, help="comma-separated column names of the rows sent")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH)
    parser.add_argument("--max-latency-ms", type=int, default=MAX_LATENCY_MS)
    args = parser.parse_args()
    env = {
        **os.environ,
        "LOOPLINE_BENCH_BUNDLE": os.path.abspath(args.bundle_dir),
        "LOOPLINE_BENCH_COLUMNS": args.columns,
        "LOOPLINE_BENCH_BENTOML_WORKERS": str(args.workers),
        "LOOPLINE_BENCH_BENTOML_MAX_BATCH": str(args.max_batch_size),
        "LOOPLINE_BENCH_BENTOML_MAX_LATENCY_MS": str(args.max_latency_ms),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "bentoml"),
        "serve",
        "bench._bentoml_peer:LooplinePeer",
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(args.port), "--working-dir", os.getcwd()]
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
