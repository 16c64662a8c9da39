"""bench/serving: `loopline serve` against the strongest Python model servers and the HTTP limit.

The model is trained and registered by the real pipeline (synthetic demo data -> ingest -> features ->
training, default MLP) into a scratch LOOPLINE_HOME. Every server answers for version 1 of it:
- ours: `python -m loopline.serving` with its production defaults (inference log, metrics, backpressure
  bounds, micro-batching);
- peers, each with its own recommended setup for throughput, each loading the same bundle that the
  registry hands our server (the same torch module, contract check and compiled feature transform, so
  the comparison is of the serving stacks):
  - LitServe 0.2 (`bench/_litserve_peer.py`: LitAPI batching max_batch_size/batch_timeout, ZeroMQ
    fast_queue, one inference worker), side venv .bench-venvs/litserve;
  - BentoML 1.4 (`bench/_bentoml_peer.py`: `@bentoml.api(batchable=True)` adaptive batching), side venv
    .bench-venvs/bentoml;
  - `mlflow models serve --env-manager local` (one uvicorn worker, the pyfunc);
- the HTTP limit (`bench/_http_limit.py`): a bare uvicorn+httptools+uvloop ASGI endpoint with our uvicorn
  settings that answers a constant prediction without reading the body.
The same load generator (bench/loadgen.py, a separate process) drives each in turn with closed-loop
clients on keep-alive connections: 1, 16 and 64 clients x 1-row and 100-row requests (`dataframe_split`;
BentoML's batchable API takes the same rows as `{"data": [...]}`). Reported per setting: throughput
(requests/s), p50/p99 latency, errors, server CPU per request; ours over the best peer (`vs_best_peer`)
and over the HTTP limit (`vs_http_limit`). Then the end-to-end time of a champion swap under load.

The peers' side venvs (their web stacks pin other FastAPI/Starlette versions than loopline's) get torch
and loopline from loopline's venv through a .pth file this bench writes. Create them once:
    python3 -m venv .bench-venvs/litserve && .bench-venvs/litserve/bin/pip install 'litserve==0.2.19'
    python3 -m venv .bench-venvs/bentoml && .bench-venvs/bentoml/bin/pip install 'bentoml==1.4.40'
A missing venv skips that peer (said in the output and the JSON).

The machine's load average is recorded before every run because other work on the same cores skews numbers.

    python -m bench serving [--seconds 8] [--warmup-seconds 2] [--clients 1,16,64] [--rows 1,100]
        [--peers litserve,bentoml,mlflow] [--skip-peer]
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
VENVS = REPO / ".bench-venvs"
PEER_NAMES = {
    "litserve": "LitServe 0.2.19 (LitAPI max_batch_size=64, batch_timeout=2 ms, fast_queue, 1 CPU worker)",
    "bentoml": "BentoML 1.4.40 (@bentoml.api batchable, max_batch_size=1024 rows, 1 worker)",
    "mlflow": "mlflow models serve --env-manager local (MLflow 3.17, 1 uvicorn worker)",
}
HTTP_LIMIT_NAME = "bare uvicorn + httptools + uvloop ASGI endpoint, constant answer, body not read"
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
    (home / "bench-model.json").write_text(json.dumps({"versions": versions}))
    return {
        "model": contract.dataset,
        "versions": versions,
        "tracking_uri": tracking_uri,
        "contract": contract,
    }


def reuse_model(home: Path) -> dict:
    """The model an earlier run built in `home` (`--home`), with @champion back on its first version."""
    from mlflow import MlflowClient

    from loopline.data.contracts import load_contract

    versions = json.loads((home / "bench-model.json").read_text())["versions"]
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    contract = load_contract(REPO / "contracts" / "demo.yaml")
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


def _bridge(venv: Path) -> Path:
    """The side venv's python, after pointing it at loopline's venv (torch, numpy, loopline) with a .pth
    that comes after the venv's own site-packages, so the peer's web stack wins where both have one."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"peer venv missing: {python} (see `python -m bench serving --help`)")
    ours = Path(sys.prefix)
    for site in venv.glob("lib/python*/site-packages"):
        own = sorted(ours.glob("lib/python*/site-packages"))
        (site / "zz-loopline-main.pth").write_text("\n".join([str(REPO), *map(str, own)]) + "\n")
    return python


def start_peer(
    kind: str, bundle: Path, columns: list[str], home: Path, rows: int = 1
) -> tuple[subprocess.Popen, str, str]:
    """A peer (litserve, bentoml) or the HTTP limit ("limit") on a free port: (process, url, ready path)."""
    port = free_port()
    if kind == "limit":
        cmd = [sys.executable, "-m", "bench._http_limit", "--port", str(port), "--rows", str(rows)]
        path = "/ping"
    elif kind == "litserve":
        cmd = [
            str(_bridge(VENVS / "litserve")),
            "-m",
            "bench._litserve_peer",
            str(bundle),
            "--port",
            str(port),
        ]
        path = "/ping"
    elif kind == "bentoml":
        cmd = [str(_bridge(VENVS / "bentoml")), "-m", "bench._bentoml_peer", str(bundle), "--port", str(port)]
        cmd += ["--columns", ",".join(columns)]
        path = "/readyz"
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", "LITSERVE_DISABLE_TELEMETRY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=open(home / f"{kind}-{port}.log", "wb"),
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}", path


def bentoml_bodies(bodies: dict[int, Path]) -> dict[int, Path]:
    """The same rows for BentoML's batchable API: `{"data": rows}` (columns given at start-up)."""
    import orjson

    out = {}
    for n, path in bodies.items():
        doc = orjson.loads(path.read_bytes())
        out[n] = path.with_name(f"bentoml-{path.name}")
        out[n].write_bytes(orjson.dumps({"data": doc["dataframe_split"]["data"]}))
    return out


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 300.0, path: str = "/ping") -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
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
def measure_peers(args, info, home, bodies, clients) -> tuple[dict, dict, dict, dict]:
    """Each peer, then the HTTP limit, in turn on the same settings: (results, start-up s, skipped, limit)."""
    from loopline.serving.registry_source import RegistrySource

    results: dict[str, dict] = {}
    startup: dict[str, float] = {}
    skipped: dict[str, str] = {}
    # the bundle our server was handed by the registry (same gate, same files) for the bundle-loading peers
    bundle = RegistrySource(info["tracking_uri"], home / "serving" / "bundles").download(
        info["model"], info["versions"][0]
    )
    columns = info["contract"].feature_columns
    peers = [] if args.skip_peer else [p for p in args.peers.split(",") if p]
    for kind in peers:
        if kind == "mlflow":
            proc, url = start_mlflow(info, home)
            path, own_bodies = "/ping", bodies
        else:
            try:
                proc, url, path = start_peer(kind, bundle, columns, home)
            except FileNotFoundError as exc:
                skipped[kind] = str(exc)
                print(f"skipping {kind}: {exc}", flush=True)
                continue
            own_bodies = bentoml_bodies(bodies) if kind == "bentoml" else bodies
        try:
            startup[kind] = wait_ready(proc, url, path=path)
            print(f"{kind} ready in {startup[kind]:.1f}s; measuring", flush=True)
            results[kind] = measure_server(
                kind, url, proc.pid, own_bodies, clients, args.seconds, args.warmup_seconds
            )
        finally:
            stop(proc)
    limit: dict = {}
    for rows, body in bodies.items():  # the constant answer carries as many predictions as the request rows
        proc, url, path = start_peer("limit", bundle, columns, home, rows=rows)
        try:
            wait_ready(proc, url, path=path)
            limit.update(
                measure_server(
                    "limit", url, proc.pid, {rows: body}, clients, args.seconds, args.warmup_seconds
                )
            )
        finally:
            stop(proc)
    return results, startup, skipped, limit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench serving", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per setting")
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--rows", default="1,100")
    parser.add_argument("--peers", default="litserve,bentoml,mlflow", help="peers to measure, in order")
    parser.add_argument(
        "--poll-seconds", type=float, default=2.0, help="our registry poll during the swap test"
    )
    parser.add_argument("--skip-peer", action="store_true", help="no peers (the HTTP limit still runs)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch LOOPLINE_HOME")
    parser.add_argument(
        "--home", default=None, help="LOOPLINE_HOME to build the model in once and reuse (kept)"
    )
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    sizes = [int(r) for r in args.rows.split(",")]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="loopline-bench-serving-"))
    if (home / "bench-model.json").is_file():  # a home an earlier run built and kept: reuse its model
        info = reuse_model(home)
        print(f"reusing the model built in {home}", flush=True)
    else:
        home.mkdir(parents=True, exist_ok=True)
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
            f"  champion swap: reload {swap['reload_end_to_end_s']} s, poll {swap['poll_end_to_end_s']} s, "
            f"failed {swap['failed_requests']}"
        )
        stop(ours)
        peers, peer_start, skipped, limit = measure_peers(args, info, home, bodies, clients)
    finally:
        for p in procs:
            stop(p)
        if not args.keep and not args.home:
            shutil.rmtree(home, ignore_errors=True)
    report(args, clients, sizes, ours_results, peers, limit, swap, ours_start, peer_start, skipped)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def report(args, clients, sizes, ours, peers, limit, swap, ours_start, peer_start, skipped) -> None:
    rows, vs_best, vs_limit = [], {}, {}
    for size in sizes:
        for n in clients:
            key = f"{n}c-{size}r"
            o = ours[key]
            per_peer = {k: r[key] for k, r in peers.items() if key in r}
            # the best peer: most requests/s among the answers that were not errors
            best = max(
                per_peer, key=lambda k: per_peer[k]["rps"] if not per_peer[k]["errors"] else 0, default=None
            )
            b = per_peer.get(best) if best else None
            vs_best[key] = (
                {
                    "best_peer": best,
                    "ours_rps": o["rps"],
                    "peer_rps": b["rps"],
                    "throughput_ratio": _ratio(o["rps"], b["rps"]),
                    "ours_p99_ms": o["p99_ms"],
                    "peer_p99_ms": b["p99_ms"],
                    "p99_no_worse": o["p99_ms"] <= b["p99_ms"],
                    "cpu_per_request_ratio": _ratio(
                        b["server_cpu_ms_per_request"], o["server_cpu_ms_per_request"]
                    ),
                }
                if b
                else None
            )
            lim = limit.get(key)
            vs_limit[key] = (
                {"ours_rps": o["rps"], "limit_rps": lim["rps"], "share": _ratio(o["rps"], lim["rps"])}
                if lim
                else None
            )
            rows.append({"setting": key, "ours": o, "peers": per_peer, "http_limit": lim})
    names = list(peers)
    print("\nrequests/s (p99 ms)")
    print(
        f"{'setting':10s} {'ours':>18s} "
        + " ".join(f"{k:>18s}" for k in [*names, "http limit"])
        + "  vs best peer  vs limit"
    )
    for r in rows:
        cells = [r["ours"], *[r["peers"].get(k) for k in names], r["http_limit"]]
        text = " ".join(f"{c['rps']:9.1f} ({c['p99_ms']:6.1f})" if c else f"{'-':>18s}" for c in cells)
        vb, vl = vs_best[r["setting"]], vs_limit[r["setting"]]
        print(
            f"{r['setting']:10s} {text}  {(vb or {}).get('throughput_ratio') or '-':>11}x "
            f"{(vl or {}).get('share') or '-':>8}"
        )
    head_key = "16c-1r" if "16c-1r" in vs_best else rows[0]["setting"]
    head = vs_best[head_key]
    goals = {
        "16_clients_2x_best_peer_at_no_worse_p99": {
            k: bool(v and v["throughput_ratio"] >= 2 and v["p99_no_worse"])
            for k, v in vs_best.items()
            if k.startswith("16c-")
        }
        or None,
        "1_row_half_of_http_limit": {
            k: bool(v and v["share"] >= 0.5) for k, v in vs_limit.items() if k.endswith("c-1r")
        },
    }
    print(f"\ngoals: {goals}")
    print(f"load average now: {os.getloadavg()}")
    result = {
        "name": "serving",
        "machine": machine(),
        "params": {
            "clients": clients,
            "rows_per_request": sizes,
            "seconds_per_setting": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "request_format": 'dataframe_split (BentoML: the same rows as {"data": rows})',
            "model": "demo MLP (hidden 128, 64) from the real pipeline, 36 contract columns",
            "ours": "python -m loopline.serving, production defaults (inference log, metrics, bounds on)",
            "headline": "16 closed-loop clients, 1-row requests: requests/s",
        },
        "ours": ours[head_key]["rps"],
        "peer": head["peer_rps"] if head else None,
        "ratio": head["throughput_ratio"] if head else None,
        "unit": "requests/s",
        "peer_name": PEER_NAMES[head["best_peer"]] if head else None,
        "details": {
            "vs_best_peer": vs_best,
            "vs_http_limit": vs_limit,
            "peer_names": {k: PEER_NAMES[k] for k in names},
            "http_limit_name": HTTP_LIMIT_NAME,
            "peers_skipped": skipped,
            "settings": rows,
            "swap": swap,
            "startup_s": {"ours": round(ours_start, 2), **{k: round(v, 2) for k, v in peer_start.items()}},
            "goals": goals,
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'serving.json'}")


if __name__ == "__main__":
    main()
