"""bench/serving_floor: where a 1-row request's time goes, between the HTTP limit and `loopline serve`.

bench/serving compares `loopline serve` with the HTTP limit (a bare uvicorn endpoint answering a constant
without reading the body). This bench puts three floors between them, each the same uvicorn settings with
one more piece (bench/_http_limit.py's modes), and ours last:
1. limit: a constant answer, the body not read;
2. read: the whole body read, a constant answer;
3. compute: the body read and scored by loopline's own steps inline on the event loop (parse_body, the
   contract check, the compiled transform, the torch model, encode_predictions), nothing around them;
4. ours: `python -m loopline.serving` with its production defaults (micro-batcher, metrics, inference log,
   backpressure, routing, request ids).
Each at 1 and 16 closed-loop clients with 1-row requests (bench/loadgen.py), on the same model as
bench/serving (built by the real pipeline, or reused with --home). Reported per server and setting:
requests/s, p50/p99, server CPU per request, and the share of the limit's requests/s.

    python -m bench serving_floor [--seconds 8] [--home DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, free_port, machine
from bench.serving import (
    REPO,
    build_model,
    request_bodies,
    reuse_model,
    run_load,
    start_ours,
    stop,
    wait_ready,
)

SERVERS = ("limit", "read", "compute", "ours")


def start_floor(mode: str, bundle: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench._http_limit", "--port", str(port)]
    cmd += ["--mode", "constant" if mode == "limit" else mode]
    if mode == "compute":
        cmd += ["--bundle", str(bundle)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench serving_floor", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup-seconds", type=float, default=2.0)
    p.add_argument("--clients", default="1,16")
    p.add_argument("--home", default=None, help="a LOOPLINE_HOME to build the model in once and reuse")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="loopline-bench-floor-"))
    home.mkdir(parents=True, exist_ok=True)
    info = reuse_model(home) if (home / "bench-model.json").is_file() else build_model(home)
    body = request_bodies(info["contract"], home, [1])[1]
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    try:
        from loopline.serving.registry_source import RegistrySource

        bundle = RegistrySource(info["tracking_uri"], home / "floor-bundles").download(
            info["model"], info["versions"][0]
        )
        for name in SERVERS:
            if name == "ours":
                proc, url = start_ours(info, home, "--poll-seconds", "0", "--log-flush-seconds", "5")
            else:
                proc, url = start_floor(name, bundle)
            try:
                wait_ready(proc, url)
                results[name] = {}
                for n in clients:
                    r = run_load(url, body, n, args.seconds, args.warmup_seconds, proc.pid)
                    results[name][f"{n}c-1r"] = r
                    print(
                        f"  {name:8s} {n:3d} clients: {r['rps']:9.1f} req/s  p50 {r['p50_ms']:6.3f} ms  "
                        f"p99 {r['p99_ms']:6.3f} ms  cpu {r['server_cpu_ms_per_request']} ms/req  "
                        f"(load {r['loadavg_1m_before']})",
                        flush=True,
                    )
            finally:
                stop(proc)
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    shares = {
        setting: {
            name: round(results[name][setting]["rps"] / results["limit"][setting]["rps"], 3)
            for name in SERVERS
        }
        for setting in results["limit"]
    }
    print("\nshare of the limit's requests/s")
    for setting, row in shares.items():
        print(f"  {setting}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print(f"load average {load_before} -> {os.getloadavg()}")
    result = {
        "name": "serving_floor",
        "machine": machine(),
        "params": {"seconds": args.seconds, "clients": clients, "rows": 1},
        "ours": results["ours"]["1c-1r"]["rps"] if "1c-1r" in results["ours"] else None,
        "peer": results["compute"]["1c-1r"]["rps"] if "1c-1r" in results["compute"] else None,
        "ratio": shares.get("1c-1r", {}).get("ours"),
        "unit": "requests/s, 1 client, 1 row (ratio: ours over the HTTP limit)",
        "peer_name": "loopline's scoring steps inline on a bare uvicorn endpoint (no serving layer)",
        "details": {
            "servers": {name: results[name] for name in SERVERS},
            "share_of_limit": shares,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    if not args.no_write:
        (RESULTS / "serving_floor.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
