"""bench/drift: loopline's drift check vs Evidently's DataDriftPreset on the same data.

1M rows x 36 columns (32 numeric of 8 shapes, 4 categorical; 6 numeric and 2 categorical shifted) as
reference and current. Ours: the reference profile is built once (training time, timed apart), then
`detect_drift` on the current window (the number compared). Peer: Evidently 0.7.23 `DataDriftPreset`
(`Report.run` only, data already loaded) from a side venv with pandas<3, because Evidently does not import
with pandas 3. Compared: time ratio (goal >= 100x) and per-column verdict agreement under Evidently's
default methods (goal >= 95%, every shifted column found). Then 10M rows, chunked, in a child process:
time and peak RSS of building the profile and of checking a window, to show memory stays bounded.

    python -m bench drift [--rows 1000000] [--big-rows 10000000] [--skip-peer]

Create the peer's venv once:
    python3 -m venv .bench-venvs/evidently && .bench-venvs/evidently/bin/pip install 'evidently==0.7.23' 'pandas<3'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEER_PYTHON = REPO / ".bench-venvs" / "evidently" / "bin" / "python"
PEER_SCRIPT = REPO / "bench" / "_evidently_drift.py"
PEER_NAME = "Evidently 0.7.23 DataDriftPreset (pandas<3 side venv)"

NUMERIC = [f"x{i:02d}" for i in range(32)]
CATEGORICAL = [f"cat{j}" for j in range(4)]
# every fifth-ish numeric column and two categoricals drift: 8 of 36
SHIFTED = {"x03", "x07", "x11", "x15", "x19", "x23", "cat1", "cat3"}
# per shape: (std, median) of the reference population, for shifts in units of spread
_LOGNORMAL_STD = float(np.sqrt((np.exp(0.36) - 1) * np.exp(0.36)))
SHAPES = {
    0: ("normal(0,1)", 1.0, 0.0),
    1: ("normal(50,10)", 10.0, 50.0),
    2: ("lognormal(0,0.6)", _LOGNORMAL_STD, 1.0),
    3: ("2000+exponential(5)", 5.0, 2000 + 5 * np.log(2)),
    4: ("uniform(-3,7)", 10 / np.sqrt(12), 2.0),
    5: ("poisson(20)", np.sqrt(20), 20.0),
    6: ("2*student_t(4)", 2 * np.sqrt(2), 0.0),
    7: ("mixture, 1% NaN", 2.45, 0.5),
}
CHUNK_ROWS = 250_000


def _numeric(rng: np.random.Generator, shape: int, rows: int) -> np.ndarray:
    if shape == 0:
        return rng.normal(0, 1, rows)
    if shape == 1:
        return rng.normal(50, 10, rows)
    if shape == 2:
        return rng.lognormal(0, 0.6, rows)
    if shape == 3:
        return 2000 + rng.exponential(5, rows)
    if shape == 4:
        return rng.uniform(-3, 7, rows)
    if shape == 5:
        return rng.poisson(20, rows).astype(np.float64)
    if shape == 6:
        return 2 * rng.standard_t(4, rows)
    x = np.where(rng.random(rows) < 0.7, rng.normal(0, 1, rows), rng.normal(5, 0.5, rows))
    x[rng.random(rows) < 0.01] = np.nan
    return x


def make_frame(rows: int, seed: int, current: bool) -> pd.DataFrame:
    """One frame of the benchmark data; `current` applies the shifts to the SHIFTED columns."""
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for i, name in enumerate(NUMERIC):
        shape = i % 8
        x = _numeric(rng, shape, rows)
        if current and name in SHIFTED:
            _, std, median = SHAPES[shape]
            # alternate a location shift (0.4 std) and a spread change (x1.6 around the median)
            x = x + 0.4 * std if (i // 4) % 2 == 0 else (x - median) * 1.6 + median
        cols[name] = x
    for j, name in enumerate(CATEGORICAL):
        k = 4 + 2 * j
        p = 1 / np.arange(1, k + 1)
        p /= p.sum()
        if current and name in SHIFTED:
            p = 0.6 * p + 0.4 * p[::-1]
        values = np.array([f"v{v:02d}" for v in range(k)], dtype=object)
        cols[name] = values[rng.choice(k, rows, p=p)]
    return pd.DataFrame(cols)


def write_data(data_dir: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """Write reference/current parquet once (reused by later runs with the same rows and seed)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = data_dir / "reference.parquet", data_dir / "current.parquet"
    for path, current, offset in ((paths[0], False, 0), (paths[1], True, 1)):
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            make_frame(rows, seed + offset, current).to_parquet(tmp, index=False)
            os.replace(tmp, path)
    return paths


def run_ours(reference: pd.DataFrame, current: pd.DataFrame, repeats: int = 3) -> dict:
    from loopline.config import DriftConfig
    from loopline.monitoring import build_reference_profile, detect_drift, profile_to_json

    t0 = time.perf_counter()
    profile = build_reference_profile(reference, NUMERIC, CATEGORICAL)
    profile_s = time.perf_counter() - t0
    times, cpu_times, report = [], [], None
    for _ in range(repeats):
        t0, cpu0 = time.perf_counter(), time.process_time()
        report = detect_drift(profile, current, DriftConfig())
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - cpu0)
    assert report is not None
    return {
        "detect_s": statistics.median(times),
        "detect_all_s": times,
        "detect_cpu_s": statistics.median(cpu_times),
        "profile_s": profile_s,
        "profile_json_bytes": len(profile_to_json(profile)),
        "drift_share": report.drift_share,
        "columns": {
            name: {k: r[k] for k in ("method", "score", "threshold", "drift")}
            for name, r in report.features.items()
        },
    }


def run_peer(reference_path: Path, current_path: Path, python: Path, timeout_s: float) -> dict:
    if not python.exists():
        raise SystemExit(
            f"peer venv missing: {python} does not exist. Create it with\n"
            "  python3 -m venv .bench-venvs/evidently && "
            ".bench-venvs/evidently/bin/pip install 'evidently==0.7.23' 'pandas<3'\n"
            "or pass --skip-peer."
        )
    cmd = [
        str(python),
        str(PEER_SCRIPT),
        str(reference_path),
        str(current_path),
        "--numeric",
        ",".join(NUMERIC),
        "--categorical",
        ",".join(CATEGORICAL),
    ]
    env = {**os.environ, "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"Evidently failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def compare(ours: dict, peer: dict) -> dict:
    names = NUMERIC + CATEGORICAL
    agree = [n for n in names if ours["columns"][n]["drift"] == peer["columns"][n]["drift"]]
    numeric_diffs = [
        abs(ours["columns"][n]["score"] - peer["columns"][n]["score"])
        for n in names
        if ours["columns"][n]["method"] == "wasserstein"
    ]
    js_diffs = [
        abs(ours["columns"][n]["score"] - peer["columns"][n]["score"])
        for n in names
        if ours["columns"][n]["method"] == "jensenshannon"
    ]
    return {
        "agreement": len(agree) / len(names),
        "disagreeing_columns": sorted(set(names) - set(agree)),
        "shifted": sorted(SHIFTED),
        "shifted_found_ours": sorted(n for n in SHIFTED if ours["columns"][n]["drift"]),
        "shifted_found_peer": sorted(n for n in SHIFTED if peer["columns"][n]["drift"]),
        "false_alarms_ours": sorted(n for n in names if n not in SHIFTED and ours["columns"][n]["drift"]),
        "max_abs_score_diff_wasserstein_normed": max(numeric_diffs, default=None),
        "max_abs_score_diff_jensenshannon": max(js_diffs, default=None),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork+exec, so a child started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def big_child(rows: int, seed: int) -> dict:
    """Runs in a child process: chunked profile build + chunked check on `rows` rows; reports peak RSS."""
    from loopline.config import DriftConfig
    from loopline.monitoring import DriftAccumulator, ProfileBuilder

    rss_start_mb = peak_rss_mb()
    chunks = max(1, rows // CHUNK_ROWS)
    build_s = check_s = 0.0
    with ProfileBuilder(NUMERIC, CATEGORICAL) as builder:
        for c in range(chunks):
            frame = make_frame(CHUNK_ROWS, seed + 1000 + 2 * c, current=False)
            t0 = time.perf_counter()
            builder.update(frame)
            build_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        profile = builder.finish()
        build_s += time.perf_counter() - t0
    rss_after_build_mb = peak_rss_mb()
    accumulator = DriftAccumulator(profile)
    for c in range(chunks):
        frame = make_frame(CHUNK_ROWS, seed + 1001 + 2 * c, current=True)
        t0 = time.perf_counter()
        accumulator.update(frame)
        check_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    report = accumulator.finish(DriftConfig())
    check_s += time.perf_counter() - t0
    return {
        "rows": chunks * CHUNK_ROWS,
        "chunk_rows": CHUNK_ROWS,
        "profile_build_s": build_s,
        "check_s": check_s,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_after_build_mb": rss_after_build_mb,
        "rss_after_imports_mb": rss_start_mb,
        "in_memory_frame_mb_estimate": chunks
        * CHUNK_ROWS
        * (len(NUMERIC) * 8 + len(CATEGORICAL) * 8)
        / 2**20,
        "drift_share": report.drift_share,
        "shifted_found": sorted(n for n in SHIFTED if report.features[n]["drift"]),
        "false_alarms": sorted(n for n, r in report.features.items() if r["drift"] and n not in SHIFTED),
    }


def run_big(rows: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "bench.drift", "--big-child", str(rows), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"10M child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(result: dict) -> None:
    ours, peer, cmp_, big = (
        result["details"]["ours"],
        result["details"].get("peer"),
        result["details"].get("comparison"),
        result["details"].get("big"),
    )
    rows = result["params"]["rows"]
    print(f"\nbench/drift  {rows:,} rows x 36 columns (8 shifted)  on {result['machine']}\n")
    print(f"{'':38}{'loopline':>14}{'Evidently':>14}")
    peer_s = f"{peer['seconds']:.1f}" if peer else "-"
    print(f"{'check current window (s)':38}{ours['detect_s']:>14.3f}{peer_s:>14}")
    peer_cpu = f"{peer['cpu_seconds']:.1f}" if peer else "-"
    print(f"{'  CPU seconds (all threads)':38}{ours['detect_cpu_s']:>14.3f}{peer_cpu:>14}")
    print(f"{'reference profile, once at training (s)':38}{ours['profile_s']:>14.3f}{'-':>14}")
    if peer:
        print(f"{'speed-up, wall (Evidently / ours)':38}{result['ratio']:>13.0f}x")
        print(f"{'speed-up, CPU (Evidently / ours)':38}{result['ratio_cpu']:>13.0f}x")
        print(f"{'verdict agreement':38}{cmp_['agreement']:>14.1%}")
        print(
            f"{'shifted columns found (of 8)':38}{len(cmp_['shifted_found_ours']):>14}"
            f"{len(cmp_['shifted_found_peer']):>14}"
        )
        print(f"{'max |normed W ours - Evidently|':38}{cmp_['max_abs_score_diff_wasserstein_normed']:>14.2e}")
        print(f"{'max |JS ours - Evidently|':38}{cmp_['max_abs_score_diff_jensenshannon']:>14.2e}")
    print(f"{'drift share':38}{ours['drift_share']:>14.3f}{(peer or {}).get('drift_share') or 0:>14.3f}")
    if big:
        print(f"\n{big['rows']:,} rows, chunks of {big['chunk_rows']:,} (child process):")
        print(f"  build profile {big['profile_build_s']:.1f} s, check window {big['check_s']:.1f} s")
        print(
            f"  peak RSS {big['peak_rss_mb']:.0f} MB (after imports {big['rss_after_imports_mb']:.0f} MB); "
            f"the same data in memory ~{big['in_memory_frame_mb_estimate']:.0f} MB per frame"
        )
        print(f"  shifted found {len(big['shifted_found'])}/8, false alarms {big['false_alarms']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench drift", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in reference and in current")
    parser.add_argument(
        "--big-rows", type=int, default=10_000_000, help="rows for the chunked run; 0 skips it"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-peer", action="store_true", help="do not run Evidently (no ratio)")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON), help="python of the Evidently side venv")
    parser.add_argument(
        "--peer-timeout", type=float, default=3600.0, help="seconds before Evidently is stopped"
    )
    parser.add_argument("--data-dir", default=None, help="where the parquet files go (default: a temp dir)")
    parser.add_argument("--big-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.big_child is not None:
        out = big_child(args.big_child, args.seed)
        print(json.dumps(out))
        return out

    data_dir = Path(args.data_dir or f"/tmp/loopline-bench-drift/r{args.rows}-s{args.seed}")
    reference_path, current_path = write_data(data_dir, args.rows, args.seed)
    reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
    ours = run_ours(reference, current)
    del reference, current
    details: dict = {"ours": ours}
    peer = None
    if not args.skip_peer:
        peer = run_peer(reference_path, current_path, Path(args.peer_python), args.peer_timeout)
        details["peer"] = peer
        details["comparison"] = compare(ours, peer)
    if args.big_rows:
        details["big"] = run_big(args.big_rows, args.seed)
    result = {
        "name": "drift",
        "machine": machine(),
        "params": {
            "rows": args.rows,
            "columns": len(NUMERIC) + len(CATEGORICAL),
            "numeric": len(NUMERIC),
            "categorical": len(CATEGORICAL),
            "shifted": sorted(SHIFTED),
            "big_rows": args.big_rows,
            "seed": args.seed,
            "metric": "seconds to check one current window (ours: detect_drift on a stored profile)",
        },
        "ours": ours["detect_s"],
        "peer": peer["seconds"] if peer else None,
        "ratio": (peer["seconds"] / ours["detect_s"]) if peer else None,
        # CPU seconds are robust to other load on the machine (wall time is not)
        "ratio_cpu": (peer["cpu_seconds"] / ours["detect_cpu_s"]) if peer else None,
        "unit": "s",
        "peer_name": PEER_NAME,
        "details": details,
    }
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "drift.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out_path.relative_to(REPO)}")
    return result


if __name__ == "__main__":
    main()
