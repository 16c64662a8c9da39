"""bench/cli: what one `loopline` command costs as a whole process, before and after the per-home Prefect
API (flows/local_api.py), beside the floor: an empty flow run against a running Prefect API.

A fresh LOOPLINE_HOME gets a 600-row dataset of its own (`loans`, its own contract, not the demo), ingested,
featurised, trained and promoted before timing. Then each command runs as a whole process, median of 3:
`ingest` (the same file again: a no-op), `features` (no-op), `train` (tiny, --fresh), `evaluate`,
`promote`, `drift` (the file against the champion's profile) and `status`. Before: LOOPLINE_LOCAL_API=0
and no PREFECT_API_URL, so Prefect starts its ephemeral API in each command (what every command paid
before flows/local_api.py); for `status`, the registry read through MLflow's client as before. After: the
home's local API already running (as the first command leaves it). Runs of the two variants alternate.

Each run is split, by a probe in the process itself, into:
- imports: wall time of module imports in the main thread (outermost `_find_and_load` calls);
- API: starting and stopping Prefect's ephemeral API (SubprocessASGIServer.start/stop), or finding the
  local one (`flows.local_api.use`), less imports inside it;
- work: task bodies (Prefect's call_task_fn, outermost, any thread; `collect_status` for status), less
  imports inside them;
- other: the rest of the wall time: interpreter start and exit, the CLI, config, Prefect's engine and its
  API calls (flow and task runs, states, logs, events), flow code between tasks.

    python -m bench cli [--rows 600] [--repeats 3] [--keep] [--max-load 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOAL_FLOOR_RATIO = 1.5  # a command's wall less its work, against the empty flow on a running API
GOAL_STATUS_S = 2.0
TINY = [
    "--set", "training.max_steps=20",
    "--set", "training.hidden_sizes=[16]",
    "--set", "training.eval_every_steps=10",
]  # fmt: skip
CONTRACT = """\
dataset: loans
id: loan_id
label: defaulted
task: binary
columns:
  loan_id:    {type: int, min: 0}
  amount:     {type: float, min: 0, max: 100000}
  rate:       {type: float, min: 0, max: 40}
  term:       {type: int, values: [12, 24, 36, 60]}
  grade:      {type: category, values: [A, B, C, D]}
  applied_at: {type: timestamp}
  defaulted:  {type: int, values: [0, 1]}
quarantine_max_fraction: 0.05
"""
EMPTY_FLOW = """\
from prefect import flow


@flow
def empty():
    return 1


empty()
"""


def write_dataset(work: Path, rows: int) -> tuple[Path, Path]:
    """loans.csv (`rows` rows, a learnable default rate) and its contract."""
    rng = random.Random(7)
    lines = ["loan_id,amount,rate,term,grade,applied_at,defaulted"]
    for i in range(rows):
        rate, grade = rng.uniform(2, 25), rng.choice("ABCD")
        risk = 1 / (1 + 2.718 ** (-(rate - 12) / 3 - (grade == "D")))
        lines.append(
            f"{i},{rng.uniform(1000, 40000):.2f},{rate:.3f},{rng.choice([12, 24, 36, 60])},{grade},"
            f"2024-{1 + i % 9:02d}-{10 + i % 10}T10:00:00,{int(rng.random() < risk)}"
        )
    data, contract = work / "loans.csv", work / "loans.yaml"
    data.write_text("\n".join(lines) + "\n")
    contract.write_text(CONTRACT)
    return data, contract


def commands(data: Path, contract: Path) -> list[tuple[str, list[str]]]:
    return [
        ("ingest (no-op)", ["ingest", "--contract", str(contract), "--source", str(data)]),
        ("features (no-op)", ["features", "--dataset", "loans"]),
        ("train (tiny)", ["train", "--dataset", "loans", "--fresh", *TINY]),
        ("evaluate", ["evaluate", "--model", "loans"]),
        ("promote", ["promote", "--model", "loans"]),
        ("drift", ["drift", "--model", "loans", "--current", str(data)]),
        ("status", ["status"]),
    ]


# -- one whole-process run -------------------------------------------------------------------------------


def run_once(work: Path, env: dict[str, str], target: list[str], *, mlflow_status: bool = False) -> dict:
    """Run `loopline TARGET...` (or `--script FILE`) under the probe; wall time from here, split from there."""
    out = work / "probe.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.cli", "--probe", str(out)]
    cmd += ["--mlflow-status"] if mlflow_status else []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run([*cmd, "--", *target], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    split = json.loads(out.read_text()) if out.exists() else {}
    parts = {k: split.get(k, 0.0) for k in ("imports_s", "api_s", "work_s")}
    return {
        "wall_s": wall,
        **parts,
        "other_s": wall - sum(parts.values()),
        "rc": proc.returncode,
        "load_1m": load,
        "api_kind": split.get("api_kind"),
        "tasks": split.get("tasks"),
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time among those that succeeded (its split with it), plus every wall."""
    ok = sorted((r for r in runs if r["rc"] == 0), key=lambda r: r["wall_s"])
    chosen = dict(ok[(len(ok) - 1) // 2]) if ok else dict(runs[0])
    chosen["walls_s"] = [round(r["wall_s"], 3) for r in runs]
    chosen["failures"] = [{"rc": r["rc"], "stderr_tail": r["stderr_tail"]} for r in runs if r["rc"] != 0]
    return chosen


def cli(env: dict[str, str], *args: str, timeout: float | None = None) -> dict:
    """`loopline ARGS --json` in a child process: its one JSON line."""
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loopline {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_for_quiet(max_load: float, tries: int, wait_s: float) -> list[float]:
    """The 1-minute load average, checked up to `tries` times `wait_s` apart until <= max_load."""
    seen = []
    for attempt in range(tries):
        seen.append(round(os.getloadavg()[0], 2))
        if seen[-1] <= max_load:
            break
        if attempt < tries - 1:
            print(f"load {seen[-1]} > {max_load}: waiting {wait_s:.0f} s", flush=True)
            time.sleep(wait_s)
    return seen


# -- the whole benchmark ---------------------------------------------------------------------------------


def measure(args, work: Path) -> dict:
    home = work / "home"
    data, contract = write_dataset(work, args.rows)
    (work / "empty_flow.py").write_text(EMPTY_FLOW)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API_", "LOOPLINE_", "MLFLOW_TRACKING_", "AWS_"))
    }
    base.update(
        LOOPLINE_HOME=str(home),
        PREFECT_HOME=str(work / "prefect-client"),  # the ephemeral API's database, not ~/.prefect's
        LOOPLINE_LOCAL_API_IDLE_SECONDS="3600",
        GX_ANALYTICS_ENABLED="false",
        MLFLOW_ENABLE_TELEMETRY="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    before, after = {**base, "LOOPLINE_LOCAL_API": "0"}, dict(base)

    print("preparing: ingest, features, train, promote (the first command starts the local API)", flush=True)
    cli(after, "ingest", "--contract", str(contract), "--source", str(data))
    cli(after, "features", "--dataset", "loans")
    cli(after, "train", "--dataset", "loans", *TINY)
    cli(after, "promote", "--model", "loans")
    cli(before, "features", "--dataset", "loans")  # the ephemeral API's first run creates its database
    from flows.local_api import read_state

    api = read_state(home)["prefect_api_url"]
    floor_env = {**after, "PREFECT_API_URL": api}

    loads_start = wait_for_quiet(args.max_load, args.load_tries, args.load_wait)
    rows: dict[str, dict[str, list[dict]]] = {}

    run_loads: list[float] = []

    def record(name: str, variant: str, result: dict) -> None:
        rows.setdefault(name, {}).setdefault(variant, []).append(result)
        run_loads.append(result["load_1m"])
        print(
            f"  {name:<20} {variant:<7} {result['wall_s']:6.2f} s  rc {result['rc']}  load {result['load_1m']:.2f}",
            flush=True,
        )

    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import prefect"], cwd=REPO, env=after, check=True)
        record(
            "import prefect",
            "after",
            {"wall_s": time.perf_counter() - started, "rc": 0, "load_1m": os.getloadavg()[0]},
        )
        order = ("before", "after") if rep % 2 == 0 else ("after", "before")
        for variant in order:
            env = before if variant == "before" else floor_env
            record("empty flow", variant, run_once(work, env, ["--script", str(work / "empty_flow.py")]))
        for name, argv in commands(data, contract):
            for variant in order:
                env = before if variant == "before" else after
                result = run_once(work, env, argv, mlflow_status=variant == "before" and name == "status")
                record(name, variant, result)
    loads_end = round(os.getloadavg()[0], 2)

    table = {name: {v: median_run(runs) for v, runs in variants.items()} for name, variants in rows.items()}
    floor = table["empty flow"]["after"]["wall_s"]
    for name, cell in table.items():
        if "after" in cell and name not in ("import prefect", "empty flow"):
            after_cell = cell["after"]
            after_cell["floor_ratio"] = after_cell["wall_s"] / floor
            after_cell["floor_ratio_less_work"] = (after_cell["wall_s"] - after_cell["work_s"]) / floor
    return {
        "table": table,
        "floor_s": floor,
        "api": api,
        "loads_1m_before_timing": loads_start,
        "load_1m_after_timing": loads_end,
        "run_load_range": [round(min(run_loads), 2), round(max(run_loads), 2)],
    }


def print_table(result: dict) -> None:
    d, p = result["details"], result["params"]
    print(
        f"\nbench/cli  {p['rows']}-row dataset of its own ('loans'), median of {p['repeats']} whole-process runs"
        f"\non {result['machine']}"
        f"\nload average (1 min): {d['loads_1m_before_timing']} before timing, {d['load_1m_after_timing']} after;"
        f" per-run loads {d['run_load_range']}\n"
    )
    head = f"{'wall':>7}{'imports':>8}{'API':>7}{'other':>7}{'work':>7}"
    print(f"{'':<20}| {'before: ephemeral API (s)':^36} | {'after: local API warm (s)':^36} | vs floor")
    print(f"{'command':<20}| {head} | {head} | {'wall':>5} {'-work':>6}")

    def cells(c: dict | None) -> str:
        if not c:
            return " " * 36
        fail = "!" if c.get("failures") else " "
        return (
            f"{c['wall_s']:>6.2f}{fail}{c.get('imports_s', 0):>8.2f}{c.get('api_s', 0):>7.2f}"
            f"{c.get('other_s', 0):>7.2f}{c.get('work_s', 0):>7.2f}"
        )

    for name, cell in d["table"].items():
        b, a = cell.get("before"), cell.get("after")
        if name == "import prefect":
            print(f"{name:<20}| {'':36} | {a['wall_s']:>6.2f}{'':30} |")
            continue
        ratio = (
            f"{a['floor_ratio']:>5.2f} {a['floor_ratio_less_work']:>6.2f}" if "floor_ratio" in a else " floor"
        )
        print(f"{name:<20}| {cells(b)} | {cells(a)} | {ratio}")
    print(
        "\nempty flow: before = ephemeral API, after = against a running API (the floor). status: before = the"
        " registry\nthrough MLflow's client, after = read from its SQLite store. '!' = a run failed (see the JSON)."
    )
    for line in d["goals"]:
        print(line)


def goals(details: dict) -> list[str]:
    """The issue's goals against the medians: no-op commands within 1.5x the floor, status under 2 s; and,
    for the commands that do work, how far their wall time less their work is from the floor, and why."""
    table, floor = details["table"], details["floor_s"]
    noops = {n: table[n]["after"]["floor_ratio"] for n in ("ingest (no-op)", "features (no-op)")}
    working = [n for n in table if n not in ("import prefect", "empty flow", "status", *noops)]
    worst = max(working, key=lambda n: table[n]["after"]["floor_ratio_less_work"])
    w, fl = table[worst]["after"], table["empty flow"]["after"]
    status_after = table["status"]["after"]["wall_s"]
    return [
        f"goal: no-op commands within {GOAL_FLOOR_RATIO}x the floor ({floor:.2f} s): "
        + ", ".join(f"{n} {r:.2f}x" for n, r in noops.items())
        + (": met" if max(noops.values()) <= GOAL_FLOOR_RATIO else ": NOT met"),
        f"commands with work, wall less work: worst {worst} {w['floor_ratio_less_work']:.2f}x the floor"
        + (": within" if w["floor_ratio_less_work"] <= GOAL_FLOOR_RATIO else ": NOT within")
        + f" {GOAL_FLOOR_RATIO}x; its imports {w['imports_s']:.2f} s (floor {fl['imports_s']:.2f}),"
        f" other {w['other_s']:.2f} s (floor {fl['other_s']:.2f}), API {w['api_s']:.2f} s",
        f"goal: loopline status under {GOAL_STATUS_S:.0f} s: {status_after:.2f} s"
        + (": met" if status_after < GOAL_STATUS_S else ": NOT met"),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--max-load", type=float, default=1.5, help="wait for a 1-min load average below this"
    )
    parser.add_argument("--load-tries", type=int, default=5)
    parser.add_argument("--load-wait", type=float, default=60.0)
    parser.add_argument("--reprint", action="store_true", help="print bench/results/cli.json again")
    args = parser.parse_args(argv)

    from bench.common import RESULTS, machine
    from flows.local_api import stop

    if args.reprint:
        result = json.loads((RESULTS / "cli.json").read_text())
        result["details"]["goals"] = goals(result["details"])
        (RESULTS / "cli.json").write_text(json.dumps(result, indent=2, default=str))
        print_table(result)
        return result

    work = Path(tempfile.mkdtemp(prefix="loopline-bench-cli-"))
    try:
        details = measure(args, work)
    finally:
        stop(work / "home")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    details["goals"] = goals(details)
    table, floor = details["table"], details["floor_s"]
    features = table["features (no-op)"]
    result = {
        "name": "cli",
        "machine": machine(),
        "params": {
            "rows": args.rows,
            "repeats": args.repeats,
            "dataset": "loans: 600 rows, its own contract (7 columns, binary label), not the demo",
            "before": "LOOPLINE_LOCAL_API=0, no PREFECT_API_URL: Prefect's ephemeral API in every command; "
            "status reads the registry through MLflow's client",
            "after": "the home's local Prefect API (flows/local_api.py) already running; status reads MLflow's SQLite",
            "floor": "an empty @flow script, whole process, PREFECT_API_URL = that running API",
            "split": "imports / API (ephemeral start+stop, or finding the local API) / work (task bodies; "
            "collect_status) / other (interpreter, CLI, Prefect engine and API calls), measured in-process",
            "train": " ".join(TINY),
            "metric": "ours: `loopline features` (no-op) after, median wall; peer: the floor; ratio ours/peer",
        },
        "ours": features["after"]["wall_s"],
        "peer": floor,
        "ratio": features["after"]["wall_s"] / floor,
        "unit": "s",
        "peer_name": "an empty flow run against a running Prefect API (whole process)",
        "details": details,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    return result


# -- the probe, inside each timed process ---------------------------------------------------------------


def probe(out: str, target: list[str], mlflow_status: bool) -> None:
    """Run the target with timing hooks, and write the split to `out` at the very end of the process."""
    import atexit
    import threading

    main_thread = threading.main_thread()
    spans: dict[str, list[tuple[float, float]]] = {"imports": [], "api": [], "work": []}
    info: dict[str, Any] = {"api_kind": None, "tasks": 0}
    depth = {"import": 0, "work": 0}
    patched: set[str] = set()
    bootstrap = sys.modules["_frozen_importlib"]
    find_and_load = bootstrap._find_and_load

    def timed_import(name, import_):
        if threading.current_thread() is not main_thread or depth["import"]:
            return find_and_load(name, import_)
        depth["import"] = 1
        started = time.perf_counter()
        try:
            return find_and_load(name, import_)
        finally:
            depth["import"] = 0
            spans["imports"].append((started, time.perf_counter()))
            patch_loaded()

    def span(kind: str, fn, label: str | None = None):
        def wrapper(*a, **kw):
            outer = kind != "work" or not depth["work"]
            depth["work"] += kind == "work"
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                depth["work"] -= kind == "work"
                if outer:
                    spans[kind].append((started, time.perf_counter()))
                    info["tasks"] += kind == "work"
                    if label:
                        info["api_kind"] = label

        return wrapper

    def async_span(fn):
        async def wrapper(*a, **kw):
            started = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                spans["work"].append((started, time.perf_counter()))
                info["tasks"] += 1

        return wrapper

    def patch_loaded() -> None:
        mods = sys.modules
        if "prefect.server.api.server" in mods and "server" not in patched:
            patched.add("server")
            cls = mods["prefect.server.api.server"].SubprocessASGIServer
            cls.start = span("api", cls.start, "ephemeral")
            cls.stop = span("api", cls.stop)
        if "prefect.task_engine" in mods and "engine" not in patched:
            patched.add("engine")
            engine = mods["prefect.task_engine"]
            engine.SyncTaskRunEngine.call_task_fn = span("work", engine.SyncTaskRunEngine.call_task_fn)
            engine.AsyncTaskRunEngine.call_task_fn = async_span(engine.AsyncTaskRunEngine.call_task_fn)
        if "flows.local_api" in mods and "local" not in patched:
            patched.add("local")
            mods["flows.local_api"].use = span("api", mods["flows.local_api"].use, "local")
        if "loopline.monitoring.status" in mods and "status" not in patched:
            patched.add("status")
            status = mods["loopline.monitoring.status"]
            status.collect_status = span("work", status.collect_status)
            if mlflow_status:
                import sqlite3

                def via_mlflow(*_a, **_kw):
                    raise sqlite3.Error("bench: read the registry through MLflow's client")

                status._registry_from_sqlite = via_mlflow

    def write() -> None:
        imports = _union(spans["imports"])
        api = _union(spans["api"])
        work = _union(spans["work"])
        taken = _union(imports + api)
        split = {
            "imports_s": _length(imports),
            "api_s": _length(api) - _overlap(api, imports),
            "work_s": _length(work) - _overlap(work, taken),
            **info,
        }
        Path(out).write_text(json.dumps(split))

    atexit.register(write)  # first registered, last run: after Prefect's ephemeral API has stopped
    bootstrap._find_and_load = timed_import
    if target[0] == "--script":
        import runpy

        runpy.run_path(target[1], run_name="__main__")
        return
    sys.argv = ["loopline", *target]
    from flows.cli import main as cli_main

    cli_main()


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(spans: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        rest = sys.argv[3:]
        flag = rest[:1] == ["--mlflow-status"]
        rest = rest[1:] if flag else rest
        probe(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest, flag)
    else:
        main()
