"""bench/footprint: what the idle local platform costs, in memory and in start-up time.

`loopline up` runs in a fresh LOOPLINE_HOME on free ports (the CLI's --prefect-port/--mlflow-port), as a
user would start it: `up_seconds` is the wall time from the command's start to its exit, when the Prefect
server and the MLflow server answer, the pools, limits, blocks and deployments exist and both workers are
online. `up` starts no model server, so one is started next the way the deploy stage does it
(`loopline.release.deploy.start_server`, loading models:/demo@champion through the stack's MLflow server);
its model is trained beforehand by the real pipeline (tiny: 2,000 rows, 20 steps), outside the timing.
After a few seconds' settling, `platform_rss_mb` sums the resident set of every process of the platform,
children included (uvicorn/gunicorn workers, MLflow's job runner, Prefect's subprocesses), with a
per-process breakdown; PSS (shared pages divided among their sharers) is given beside it. Then
`loopline down`.

    python -m bench footprint [--settle 5] [--keep]

Goals (issue 15): idle platform < 1 GB RSS, `loopline up` ready < 20 s on this machine. The keys merge into
bench/results/lifecycle.json's `details` (read-modify-write: the rest of that file stays).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cli import cli
from bench.common import RESULTS, free_port, machine

REPO = Path(__file__).resolve().parent.parent
GOAL_RSS_MB = 1024.0
GOAL_UP_SECONDS = 20.0
MB = 2**20


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    env.update(
        LOOPLINE_HOME=str(home),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        GX_ANALYTICS_ENABLED="false",
        MLFLOW_ENABLE_TELEMETRY="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.pop("LOOPLINE_LAKE_URI", None)
    return env


TRAIN = """
import sys
from pathlib import Path
from loopline.config import LifecycleConfig, SyntheticConfig
from loopline.data.contracts import load_contract
from loopline.data.ingest import ingest_source
from loopline.data.synthetic import generate_source
from loopline.features import build_features
from loopline.storage.lake import Lake
from loopline.train.run import run_training
from mlflow import MlflowClient

home, contract_path = Path(sys.argv[1]), sys.argv[2]
uri = f"sqlite:///{home / 'mlflow.db'}"
contract = load_contract(contract_path)
lake = Lake(root=str(home / "lake"))
cfg = LifecycleConfig(home=str(home), data={"contract": contract_path},
                      training={"max_steps": 20, "hidden_sizes": [16], "batch_size": 256})
ingest_source(str(generate_source(SyntheticConfig(rows=2000, seed=3), home / "landing")), contract, lake, cfg)
build_features(lake, contract, cfg.features)
version = run_training(cfg, contract.dataset, lake=lake, tracking_uri=uri)["model_version"]
MlflowClient(uri).set_registered_model_alias(contract.dataset, "champion", str(version))
print(contract.dataset)
"""


def train_model(home: Path, env: dict[str, str]) -> str:
    """A registered demo model with @champion in $home/mlflow.db (the store the stack's MLflow server uses)."""
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    contract = str(REPO / "contracts" / "demo.yaml")
    return _python(env, "training the bench model", 600, TRAIN, str(home), contract)


def start_model_server(home: Path, model: str, tracking_uri: str, env: dict[str, str]) -> dict[str, Any]:
    """One model server, as the deploy stage starts it (recorded under $home, so `loopline down` stops it)."""
    code = (
        "import json, sys\n"
        "from loopline.config import ServingConfig\n"
        "from loopline.release.deploy import start_server\n"
        "s = start_server(sys.argv[1], sys.argv[2], ServingConfig(port=int(sys.argv[4])), tracking_uri=sys.argv[3])\n"
        "print(json.dumps({'pid': s.pid, 'url': s.url}))\n"
    )
    t0 = time.perf_counter()
    out = _python(
        env, "starting the model server", 300, code, str(home), model, tracking_uri, str(free_port())
    )
    return {**json.loads(out), "start_seconds": time.perf_counter() - t0}


def _python(env: dict[str, str], doing: str, timeout: float, code: str, *args: str) -> str:
    """`python -c CODE ARGS` in the repo: the last line it printed."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{doing} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def process_tree(roots: dict[str, int]) -> list[dict[str, Any]]:
    """Every live process under each named root pid (the root and all its descendants), with RSS and PSS."""
    import psutil

    rows = []
    for name, pid in roots.items():
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for i, proc in enumerate(members):
            try:
                mem = proc.memory_full_info()
                cmd = " ".join(proc.cmdline()[1:4])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rows.append(
                {
                    "process": name if i == 0 else f"{name}/child",
                    "pid": proc.pid,
                    "cmd": cmd[:80],
                    "rss_mb": round(mem.rss / MB, 1),
                    "pss_mb": round(getattr(mem, "pss", mem.rss) / MB, 1),
                }
            )
    return rows


def _roots(processes: list[dict[str, Any]]) -> dict[str, int]:
    """name -> pid of each recorded process, once per pid (`up` records its one workers process twice:
    worker-cpu and worker-gpu), named by all its roles."""
    names: dict[int, list[str]] = {}
    for proc in processes:
        names.setdefault(proc["pid"], []).append(proc["name"])
    return {"+".join(n): pid for pid, n in names.items()}


def _cpu(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds so far of each named process tree (live members only)."""
    import psutil

    out = {}
    for name, pid in roots.items():
        try:
            root = psutil.Process(pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                t = proc.cpu_times()
                total += t.user + t.system
            out[name] = round(total, 2)
        except psutil.NoSuchProcess:
            continue
    return out


def _by_component(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        name = row["process"].split("/")[0]
        entry = out.setdefault(name, {"processes": 0, "rss_mb": 0.0, "pss_mb": 0.0})
        entry["processes"] += 1
        entry["rss_mb"] = round(entry["rss_mb"] + row["rss_mb"], 1)
        entry["pss_mb"] = round(entry["pss_mb"] + row["pss_mb"], 1)
    return out


def measure_platform(settle_seconds: float = 5.0, keep: bool = False) -> dict[str, Any]:
    """`loopline up` in a fresh home (timed), one model server, the whole tree's RSS after settling, `down`.

    Returns up_seconds, platform_rss_mb, platform_pss_mb, processes, per_component, per_process,
    model_server_start_seconds, the goals and whether each is met."""
    work = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    home = work / "home"
    home.mkdir()
    env = _env(home)
    try:
        model = train_model(home, env)
        ports = {"prefect": free_port(), "mlflow": free_port()}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        stack = cli(env, "up", "--prefect-port", str(ports["prefect"]), "--mlflow-port", str(ports["mlflow"]))
        up_seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        roots = _roots(stack["processes"])
        # CPU seconds spent to get here: each platform process (with its children) and the `up` command itself
        # (with what it waited for: the `prefect deploy`). On a busy 2-core machine the wall time follows these.
        up_cpu = {**cpu_seconds(roots), "up-command": round(_cpu(after) - _cpu(before), 2)}
        try:
            server = start_model_server(home, model, stack["mlflow_tracking_uri"], env)
            time.sleep(settle_seconds)
            roots["model-server"] = server["pid"]
            rows = process_tree(roots)
        finally:
            cli(env, "down", timeout=180)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    rss = sum(r["rss_mb"] for r in rows)
    return {
        "up_seconds": round(up_seconds, 2),
        "up_goal_seconds": GOAL_UP_SECONDS,
        "up_goal_met": up_seconds < GOAL_UP_SECONDS,
        "up_cpu_seconds": up_cpu,
        "up_cpu_seconds_total": round(sum(up_cpu.values()), 2),
        "platform_rss_mb": round(rss, 1),
        "platform_rss_goal_mb": GOAL_RSS_MB,
        "platform_rss_goal_met": rss < GOAL_RSS_MB,
        "platform_pss_mb": round(sum(r["pss_mb"] for r in rows), 1),
        "platform_processes": len(rows),
        "platform_per_component": _by_component(rows),
        "platform_per_process": rows,
        "model_server_start_seconds": round(server["start_seconds"], 2),
        "platform_settle_seconds": settle_seconds,
        "platform_load_average": list(os.getloadavg()),
        "platform_workdir": str(work) if keep else None,
    }


def print_table(m: dict[str, Any]) -> None:
    print(f"\nplatform (load average {' '.join(f'{x:.2f}' for x in m['platform_load_average'])})")
    print(f"{'component':<16}{'procs':>6}{'RSS MB':>9}{'PSS MB':>9}")
    for name, c in m["platform_per_component"].items():
        print(f"{name:<16}{c['processes']:>6}{c['rss_mb']:>9.0f}{c['pss_mb']:>9.0f}")
    print(
        f"{'total':<16}{m['platform_processes']:>6}{m['platform_rss_mb']:>9.0f}{m['platform_pss_mb']:>9.0f}"
    )
    for key, unit, goal in (
        ("platform_rss_mb", "MB", m["platform_rss_goal_mb"]),
        ("up_seconds", "s", m["up_goal_seconds"]),
    ):
        ours = m[key]
        verdict = "met" if ours < goal else "NOT met"
        print(
            f"{key:<16} ours {ours:8.1f} {unit}  goal < {goal:g} {unit}  ratio {ours / goal:.2f}  ({verdict})"
        )
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in m["up_cpu_seconds"].items())
    print(f"CPU seconds until ready: {m['up_cpu_seconds_total']:.1f} ({cpu})")
    print(f"model server start (not in up_seconds): {m['model_server_start_seconds']:.1f} s")


def merge_into_lifecycle(m: dict[str, Any], path: Path | None = None) -> Path:
    """Read-modify-write bench/results/lifecycle.json: these keys into `details`, everything else kept."""
    path = path or RESULTS / "lifecycle.json"
    data = json.loads(path.read_text()) if path.exists() else {"name": "lifecycle", "details": {}}
    measured = {k: v for k, v in m.items() if k != "platform_workdir"}
    # the top-level keys and the `platform` block bench/lifecycle writes: both from this run
    data.setdefault("details", {}).update({**measured, "platform": measured})
    data.setdefault("machine", machine())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench footprint", description=__doc__.split("\n")[0])
    p.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring RSS")
    p.add_argument("--keep", action="store_true", help="keep the scratch LOOPLINE_HOME (logs)")
    p.add_argument("--no-write", action="store_true", help="print only; leave lifecycle.json alone")
    args = p.parse_args(argv)
    m = measure_platform(args.settle, args.keep)
    print_table(m)
    if not args.no_write:
        print(f"merged into {merge_into_lifecycle(m)}")
    return m


if __name__ == "__main__":
    main()
