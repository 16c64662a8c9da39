"""bench/scale: a folder of many files through the ingest flow, local executor vs Dask with 1 and 2 workers.

The demo dataset (contracts/demo.yaml: 38 columns, 64 GX expectations), `--rows` rows in `--files` Parquet
files of text, 1% bad rows, ids disjoint between files unless `--overlap-rows` makes neighbours share some
(then a file waits for the one before it: see loopline.data.parallel_plan). Each contender runs the real
`ingest` flow against a real Prefect API in a fresh process on a fresh lake, one after another:

- local (the peer): `data.executor: local`, one file after another in the flow process;
- dask-N (ours): `data.executor: dask` on a LocalCluster of N single-threaded worker processes (started
  before the clock starts, its start-up reported apart), the flow process committing.

Reported per contender: wall seconds of the flow, peak RSS of the flow process and of each worker process
(ru_maxrss), and the counts, which must be equal across contenders (clean, quarantined, rejected batches).
Scaling efficiency: speedup / workers, against the local run and against dask-1.

    python -m bench scale [--rows 10000000] [--files 100] [--workers 1,2] [--overlap-rows 0] [--data DIR]

Expect on this 2-core machine: dask-1 a little slower than local (the same work plus scans and staging),
dask-2 at best ~2x local minus the committer's serial share (the Delta commits, ledger and Prefect calls per
batch run in the flow process, which also competes for the 2 cores). With more cores, the parallel part
(parse, validate, stage: most of the time) scales with workers until the single committer's serial commits
bound it (Amdahl): the commit phase per batch is the number to watch.
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

from bench.common import RESULTS, free_port, machine

REPO = Path(__file__).resolve().parent.parent
CONTRACT = REPO / "contracts" / "demo.yaml"


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return
    data = Path(
        args.data
        or Path(tempfile.gettempdir()) / f"loopline-scale-{args.rows}-{args.files}-{args.overlap_rows}"
    )
    made = _make_data(data, args.rows, args.files, args.overlap_rows)
    with _prefect_api() as env:
        runs = {"local": _run(args, data, 0, env)}
        for n in [int(x) for x in args.workers.split(",") if x]:
            runs[f"dask-{n}"] = _run(args, data, n, env)
    counts = {name: run["counts"] for name, run in runs.items()}
    if len({json.dumps(c, sort_keys=True) for c in counts.values()}) != 1:
        raise SystemExit(f"contenders disagree on the result: {counts}")
    local = runs["local"]["wall_s"]
    best = max(
        (n for n in runs if n.startswith("dask-")), key=lambda n: int(n.split("-")[1]), default="local"
    )
    for name, run in runs.items():
        n = int(name.split("-")[1]) if name.startswith("dask-") else 1
        run["speedup_vs_local"] = local / run["wall_s"]
        run["efficiency_vs_local"] = run["speedup_vs_local"] / n
        if "dask-1" in runs and name.startswith("dask-"):
            run["efficiency_vs_dask1"] = runs["dask-1"]["wall_s"] / (n * run["wall_s"])
    result = {
        "name": "scale",
        "machine": machine(),
        "params": {
            "rows": args.rows,
            "files": args.files,
            "overlap_rows": args.overlap_rows,
            "workers": args.workers,
            "data_generation_s": made,
            "metric": "wall seconds of the ingest flow over the folder (cluster start-up excluded, reported apart)",
        },
        "ours": runs[best]["wall_s"],
        "peer": local,
        "ratio": local / runs[best]["wall_s"],
        "unit": "s",
        "peer_name": "the same ingest flow with data.executor local (one file after another)",
        "details": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2))
    _print(result)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="rows in all files together")
    p.add_argument("--files", type=int, default=100, help="files the rows are split into (one batch each)")
    p.add_argument("--workers", default="1,2", help="Dask worker counts to run, comma-separated")
    p.add_argument("--overlap-rows", type=int, default=0, help="ids each file shares with the one before it")
    p.add_argument("--data", default=None, help="folder for the generated files (reused when present)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--dask", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _make_data(folder: Path, rows: int, files: int, overlap: int) -> float:
    """The files, generated once per (rows, files, overlap): reused by later runs."""
    from loopline.config import SyntheticConfig
    from loopline.data.synthetic import generate_source

    done = folder / "DONE"
    if done.exists():
        return float(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    per_file = rows // files
    for k in range(files):
        n = per_file + (rows % files if k == files - 1 else 0)
        cfg = SyntheticConfig(
            rows=n, seed=k + 1, id_offset=max(0, k * per_file - overlap), bad_fraction=0.01, format="parquet"
        )
        generate_source(cfg, folder / "tmp").rename(folder / f"part-{k:05d}.parquet")
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    took = time.perf_counter() - started
    done.write_text(str(took))
    return took


class _prefect_api:
    """PREFECT_API_URL when set; else a `prefect server start` of our own for the run."""

    def __enter__(self) -> dict:
        self.proc = None
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        if os.environ.get("PREFECT_API_URL"):
            return env
        self.home = tempfile.mkdtemp(prefix="loopline-scale-prefect-")
        port = free_port()
        server_env = {**env, "PREFECT_HOME": self.home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/api"
        _wait(f"{url}/health")
        return {**env, "PREFECT_API_URL": url, "PREFECT_HOME": self.home}

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            shutil.rmtree(self.home, ignore_errors=True)


def _wait(url: str, timeout: float = 180.0) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _run(args, data: Path, workers: int, env: dict) -> dict:
    home = Path(tempfile.mkdtemp(prefix="loopline-scale-home-"))
    try:
        cmd = [sys.executable, "-m", "bench", "scale", "--child", "--home", str(home), "--source", str(data)]
        out = subprocess.run(
            [*cmd, "--dask", str(workers)], env=env, cwd=REPO, capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            name = f"dask-{workers}" if workers else "local"
            raise SystemExit(f"{name} failed:\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _child(args) -> dict:
    """One contender in this (fresh) process: the ingest flow over the folder."""
    from loopline.config import LifecycleConfig

    data = {"contract": str(CONTRACT), "source": str(Path(args.source))}
    cluster = client = None
    cluster_s = None
    if args.dask:
        from distributed import Client, LocalCluster

        started = time.perf_counter()
        cluster = LocalCluster(
            n_workers=args.dask, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        client = Client(cluster)
        client.run(_warm)  # imports on the workers, as a long-lived cluster has them
        cluster_s = time.perf_counter() - started
        data.update(executor="dask", dask_address=cluster.scheduler_address)
    cfg = LifecycleConfig(home=args.home, validation={"data_docs": False}, data=data)
    from flows.ingest import ingest_flow

    started = time.perf_counter()
    results = ingest_flow(cfg)
    wall = time.perf_counter() - started
    out = {
        "wall_s": round(wall, 3),
        "cluster_start_s": None if cluster_s is None else round(cluster_s, 3),
        "flow_process_peak_rss_mb": _peak_rss_mb(),
        "worker_peak_rss_mb": sorted(client.run(_peak_rss_mb).values()) if client else [],
        "counts": {
            "batches": len(results),
            "rows_in": sum(r["rows_in"] for r in results),
            "rows_clean": sum(r["rows_clean"] for r in results),
            "rows_quarantined": sum(r["rows_quarantined"] for r in results),
            "rejected": sum(not r["accepted"] for r in results),
        },
    }
    if client is not None:
        client.close()
        cluster.close()
    return out


def _warm() -> None:
    import great_expectations  # noqa: F401

    import tasks.ingest_dask  # noqa: F401


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _print(result: dict) -> None:
    p = result["params"]
    print(f"bench scale: {p['rows']:,} rows in {p['files']} files ({result['machine']})")
    print(
        f"{'contender':<10} {'wall s':>8} {'speedup':>8} {'eff.':>6} {'eff. vs dask-1':>15} "
        f"{'flow RSS MB':>12}  worker RSS MB"
    )
    for name, run in result["details"].items():
        vs1 = run.get("efficiency_vs_dask1")
        print(
            f"{name:<10} {run['wall_s']:>8.1f} {run['speedup_vs_local']:>8.2f} {run['efficiency_vs_local']:>6.2f} "
            f"{'' if vs1 is None else f'{vs1:.2f}':>15} {run['flow_process_peak_rss_mb']:>12.0f}  "
            f"{run['worker_peak_rss_mb']}"
            + (f"  (cluster start {run['cluster_start_s']:.1f} s)" if run["cluster_start_s"] else "")
        )


if __name__ == "__main__":
    main()
