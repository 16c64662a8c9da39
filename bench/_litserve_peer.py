"""bench/serving's LitServe peer: the registered model's bundle behind LitServe, set up as LitServe's docs
recommend for throughput (dynamic batching with `max_batch_size`/`batch_timeout`, ZeroMQ `fast_queue`, one
inference worker per CPU device, quiet logs, no client file).

Runs in the side venv .bench-venvs/litserve (litserve pins a newer FastAPI than loopline's environment);
torch, numpy and loopline itself come from loopline's venv through a .pth file that bench/serving writes, so
the peer scores with exactly the code loopline serves with: the contract check (`InputChecker`), the compiled
feature transform and the same torch module. What differs is the serving stack around it. Usage:

    .bench-venvs/litserve/bin/python -m bench._litserve_peer BUNDLE_DIR --port 8124 \
        [--max-batch-size 64] [--batch-timeout 0.002] [--workers-per-device 1]
"""

from __future__ import annotations

import argparse
import os

import litserve as ls


class LooplineAPI(ls.LitAPI):
    """dataframe_split in, {"predictions": [...]} out: the same request and answer as loopline's server."""

    def __init__(self, bundle_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.bundle_dir = bundle_dir

    def setup(self, device):
        import torch

        from loopline.serving.model import load_bundle_model

        torch.set_num_threads(1)
        self.model = load_bundle_model(
            self.bundle_dir, name="demo", version="1", alias="champion", device="cpu"
        )

    def decode_request(self, request):
        from loopline.serving.protocol import parse_document

        return self.model.checker.check(parse_document(request))

    def batch(self, inputs):
        from loopline.serving.inputs import concat_rows

        self._sizes = [rows.n_rows for rows in inputs]
        return concat_rows(list(inputs))

    def predict(self, rows):
        return self.model.score(rows)

    def unbatch(self, output):
        parts, start = [], 0
        for n in self._sizes:
            parts.append(output[start : start + n])
            start += n
        return parts

    def encode_response(self, output):
        return {"predictions": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    parser.add_argument("--workers-per-device", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("LITSERVE_DISABLE_TELEMETRY", "1")
    api = LooplineAPI(
        args.bundle_dir,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        api_path="/invocations",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers_per_device,
        fast_queue=True,
        healthcheck_path="/ping",
    )
    server.run(
        host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False, backlog=4096
    )


if __name__ == "__main__":
    main()
