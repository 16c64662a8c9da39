"""bench/serving: `loopline serve` vs `mlflow models serve --env-manager local` on the same registered model.

The model is trained and registered by the real pipeline (synthetic demo data -> ingest -> features ->
training, default MLP) into a scratch LOOPLINE_HOME. Both servers serve version 1 of it; the same load
generator (bench/loadgen.py, a separate process) drives each in turn with closed-loop clients on keep-alive
connections: 1, 16 and 64 clients x 1-row and 100-row `dataframe_split` requests. Reported per setting:
throughput (requests/s), p50 and p99 latency, errors. Then the end-to-end time of a champion swap: from
moving @champion in the registry to the first response from the new version, through `POST /reload` and
through the registry poll, under 4 clients of continuous load (failed requests counted).

Both servers run with their defaults (ours: one process, micro-batching; mlflow: one uvicorn worker). The
machine's load average is recorded before every run because other work on the same cores skews numbers.

    python -m bench serving [--seconds 8] [--warmup-seconds 2] [--clients 1,16,64] [--rows 1,100] [--skip-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import free_port, machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEER_NAME = "mlflow models serve --env-manager local (MLflow 3.17, 1 uvicorn worker)"
TOKEN = "bench-reload-token"


# -- the model ------------------------------------------------------------------------------------------
def build_model(home: Path, rows: int = 5000, max_steps: int = 60) -> dict:
    """Two versions of `demo` from the real pipeline; version 1 is @champion."""
    from loopline.config import LifecycleConfig, SyntheticConfig
    from loopline.data.contracts import load_contract
    from loopline.data.ingest import ingest_source
    from loopline.data.synthetic import generate_source
    from loopline.features import build_features
    from loopline.storage.lake import Lake
    from loopline.train import run_training

    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    contract_path = REPO / "contracts" / "demo.yaml"
    contract = load_contract(contract_path)
    lake = Lake(root=str(home / "lake"))
    cfg = LifecycleConfig(home=str(home), data={"contract": str(contract_path)})
    source = generate_source(SyntheticConfig(rows=rows, seed=3), home / "landing")
    ingest_source(str(source), contract, lake, cfg)
    build_features(lake, contract, cfg.features)
    versions = []
    for seed in (0, 1):
        tcfg = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"max_steps": max_steps, "seed": seed})}
        )
        versions.append(
            str(run_training(tcfg, contract.dataset, lake=lake, tracking_uri=tracking_uri)["model_version"])
        )
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_registered_model_alias(contract.dataset, "champion", versions[0])
    return {
        "model": contract.dataset,
        "versions": versions,
        "tracking_uri": tracking_uri,
        "contract": contract,
    }


def request_bodies(contract, directory: Path, sizes: list[int]) -> dict[int, Path]:
    """`dataframe_split` bodies of 1 and 100 demo rows (with the demo's natural nulls)."""
    import orjson

    from loopline.config import SyntheticConfig
    from loopline.data.synthetic import generate_frame

    frame = generate_frame(SyntheticConfig(rows=max(sizes), seed=42, id_offset=50_000_000))
    cols = contract.feature_columns
    frame = frame[cols].copy()
    frame["signup_at"] = frame["signup_at"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    frame = frame.astype(object).where(frame.notna(), None)
    out = {}
    for n in sizes:
        path = directory / f"body-{n}.json"
        path.write_bytes(
            orjson.dumps({"dataframe_split": {"columns": cols, "data": frame.head(n).values.tolist()}})
        )
        out[n] = path
    return out


# -- servers --------------------------------------------------------------------------------------------
def start_ours(info: dict, home: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "loopline.serving",
        "--model",
        info["model"],
        "--port",
        str(port),
        "--home",
        str(home),
    ]
    cmd += ["--tracking-uri", info["tracking_uri"], *extra]
    env = {**os.environ, "LOOPLINE_RELOAD_TOKEN": TOKEN}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(home / f"ours-{port}.log", "wb")
    )
    return proc, f"http://127.0.0.1:{port}"


def start_mlflow(info: dict, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": info["tracking_uri"],
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{info['model']}/{info['versions'][0]}"]
    cmd += ["-p", str(port), "-h", "127.0.0.1", "--env-manager", "local"]
    proc = subprocess.Popen(
        cmd,
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / f"mlflow-{port}.log", "wb"),
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 300.0) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM) if os.getpgid(proc.pid) == proc.pid else proc.terminate()
    except ProcessLookupError:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (mlflow serve runs uvicorn as a child)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_load(url: str, body: Path, clients: int, seconds: float, warmup: float, server_pid: int) -> dict:
    """One load-generator process against one server setting; also the server's CPU per request, which
    other load on the machine disturbs far less than wall-clock throughput."""
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", f"{url}/invocations", "--body-file", str(body)]
    cmd += ["--clients", str(clients), "--seconds", str(seconds), "--warmup-seconds", str(warmup)]
    load_before = os.getloadavg()[0]
    gen = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup)
    cpu_start, wall_start = tree_cpu_seconds(server_pid), time.perf_counter()
    out, _ = gen.communicate(timeout=seconds + warmup + 120)
    cpu = tree_cpu_seconds(server_pid) - cpu_start
    wall = time.perf_counter() - wall_start
    result = json.loads(out.strip().splitlines()[-1])
    result["loadavg_1m_before"] = round(load_before, 2)
    served = result["rps"] * wall
    result["server_cpu_ms_per_request"] = round(cpu * 1000 / served, 3) if served else None
    result["server_cores_used"] = round(cpu / wall, 2) if wall else None
    return result


def measure_server(
    name: str, url: str, pid: int, bodies: dict[int, Path], clients: list[int], seconds: float, warmup: float
) -> dict:
    results = {}
    for rows, body in bodies.items():
        for n in clients:
            r = run_load(url, body, n, seconds, warmup, pid)
            results[f"{n}c-{rows}r"] = r
            print(
                f"  {name:8s} {n:3d} clients {rows:4d} rows: {r['rps']:9.1f} req/s  p50 {r['p50_ms']:8.2f} ms  "
                f"p99 {r['p99_ms']:8.2f} ms  errors {r['errors']}  cpu {r['server_cpu_ms_per_request']} ms/req "
                f"(load {r['loadavg_1m_before']})",
                flush=True,
            )
    return results


# -- champion swap ----------------------------------------------------------------------------------------
def measure_swap(info: dict, url: str, body: Path, poll_seconds: float) -> dict:
    """Move @champion, then time until responses come from the new version (reload, then poll), under load."""
    import httpx
    from mlflow import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    v1, v2 = info["versions"]
    payload = body.read_bytes()
    stop_event = threading.Event()
    seen: list[tuple[float, int, str]] = []

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop_event.is_set():
                try:
                    r = http.post(
                        f"{url}/invocations", content=payload, headers={"content-type": "application/json"}
                    )
                    seen.append((time.perf_counter(), r.status_code, r.headers.get("x-model-version", "")))
                except httpx.HTTPError:
                    seen.append((time.perf_counter(), 0, ""))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)

    def first_from(version: str, since: float, timeout: float = 120.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            hits = [at for at, code, v in list(seen) if at > since and v == version]
            if hits:
                return min(hits) - since
            time.sleep(0.005)
        raise TimeoutError(f"version {version} never answered")

    # through POST /reload (what the deployment stage calls after a promotion)
    t0 = time.perf_counter()
    client.set_registered_model_alias(info["model"], "champion", v2)
    httpx.post(f"{url}/reload", headers={"x-reload-token": TOKEN}, timeout=120)
    reload_s = first_from(v2, t0)
    time.sleep(1.0)
    # through the registry poll alone
    t1 = time.perf_counter()
    client.set_registered_model_alias(info["model"], "champion", v1)
    poll_s = first_from(v1, t1, timeout=poll_seconds * 3 + 60)
    time.sleep(0.5)
    stop_event.set()
    for t in threads:
        t.join()
    failed = sum(1 for _, code, _ in seen if code != 200)
    return {
        "reload_end_to_end_s": round(reload_s, 3),
        "poll_end_to_end_s": round(poll_s, 3),
        "poll_seconds": poll_seconds,
        "requests_during_swaps": len(seen),
        "failed_requests": failed,
    }


# -- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench serving", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per setting")
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--rows", default="1,100")
    parser.add_argument(
        "--poll-seconds", type=float, default=2.0, help="our registry poll during the swap test"
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch LOOPLINE_HOME")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    sizes = [int(r) for r in args.rows.split(",")]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    home = Path(tempfile.mkdtemp(prefix="loopline-bench-serving-"))
    print(f"building the model with the real pipeline in {home} ...", flush=True)
    info = build_model(home)
    bodies = request_bodies(info["contract"], home, sizes)
    procs: list[subprocess.Popen] = []
    try:
        ours, ours_url = start_ours(
            info, home, "--poll-seconds", str(args.poll_seconds), "--log-flush-seconds", "5"
        )
        procs.append(ours)
        ours_start = wait_ready(ours, ours_url)
        print(f"loopline serve ready in {ours_start:.1f}s; measuring", flush=True)
        ours_results = measure_server(
            "loopline", ours_url, ours.pid, bodies, clients, args.seconds, args.warmup_seconds
        )
        swap = measure_swap(info, ours_url, bodies[min(sizes)], args.poll_seconds)
        print(
            f"  champion swap: reload {swap['reload_end_to_end_s']} s, poll {swap['poll_end_to_end_s']} s, failed {swap['failed_requests']}"
        )
        stop(ours)
        peer_results, peer_start = {}, None
        if not args.skip_peer:
            peer, peer_url = start_mlflow(info, home)
            procs.append(peer)
            peer_start = wait_ready(peer, peer_url)
            print(f"mlflow models serve ready in {peer_start:.1f}s; measuring", flush=True)
            peer_results = measure_server(
                "mlflow", peer_url, peer.pid, bodies, clients, args.seconds, args.warmup_seconds
            )
            stop(peer)
    finally:
        for p in procs:
            stop(p)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    report(args, clients, sizes, ours_results, peer_results, swap, ours_start, peer_start)


def report(
    args, clients, sizes, ours: dict, peer: dict, swap: dict, ours_start: float, peer_start: float | None
) -> None:
    rows = []
    for size in sizes:
        for n in clients:
            key = f"{n}c-{size}r"
            o, p = ours[key], peer.get(key)
            ratio = round(o["rps"] / p["rps"], 2) if p and p["rps"] else None
            cpu_ratio = (
                round(p["server_cpu_ms_per_request"] / o["server_cpu_ms_per_request"], 2)
                if p and p.get("server_cpu_ms_per_request") and o.get("server_cpu_ms_per_request")
                else None
            )
            rows.append(
                {
                    "setting": key,
                    "ours": o,
                    "peer": p,
                    "throughput_ratio": ratio,
                    "p99_ratio": round(p["p99_ms"] / o["p99_ms"], 2) if p else None,
                    "cpu_per_request_ratio": cpu_ratio,
                }
            )
    print(
        "\nsetting      ours req/s   p50 ms   p99 ms  cpu ms | mlflow req/s   p50 ms   p99 ms  cpu ms | req/s ratio  cpu ratio"
    )
    for r in rows:
        o, p = r["ours"], r["peer"]
        ours_cols = f"{o['rps']:12.1f} {o['p50_ms']:8.2f} {o['p99_ms']:8.2f} {o['server_cpu_ms_per_request'] or 0:7.2f}"
        peer_cols = (
            f"{p['rps']:12.1f} {p['p50_ms']:8.2f} {p['p99_ms']:8.2f} {p['server_cpu_ms_per_request'] or 0:7.2f}"
            if p
            else " " * 38 + "-"
        )
        print(
            f"{r['setting']:10s} {ours_cols} | {peer_cols} | {r['throughput_ratio'] or '-':>10}x {r['cpu_per_request_ratio'] or '-':>9}x"
        )
    head = next((r for r in rows if r["setting"] == "16c-1r"), rows[0])
    ratios = [r["throughput_ratio"] for r in rows if r["throughput_ratio"] is not None]
    goals = None
    if peer:
        goals = {
            "16_clients_10x_at_no_worse_p99": all(
                r["throughput_ratio"] >= 10 and r["ours"]["p99_ms"] <= r["peer"]["p99_ms"]
                for r in rows
                if r["setting"].startswith("16c-")
            ),
            "every_setting_3x": min(ratios) >= 3,
            "min_ratio": min(ratios),
        }
        print(f"\ngoals: {goals}")
    result = {
        "name": "serving",
        "machine": machine(),
        "params": {
            "clients": clients,
            "rows_per_request": sizes,
            "seconds_per_setting": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "request_format": "dataframe_split",
            "model": "demo MLP (hidden 128, 64) from the real pipeline, 36 contract columns",
            "headline": "16 closed-loop clients, 1-row requests: requests/s",
        },
        "ours": head["ours"]["rps"],
        "peer": head["peer"]["rps"] if head["peer"] else None,
        "ratio": head["throughput_ratio"],
        "unit": "requests/s",
        "peer_name": PEER_NAME,
        "details": {
            "settings": rows,
            "swap": swap,
            "startup_s": {"ours": round(ours_start, 2), "peer": round(peer_start, 2) if peer_start else None},
            "goals": goals,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'serving.json'}")


if __name__ == "__main__":
    main()
