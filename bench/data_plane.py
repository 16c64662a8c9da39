"""bench/data_plane: the validation gate vs a plain Great Expectations run, and ingest vs the numpy limit.

The demo source (contracts/demo.yaml: 38 columns, 64 GX expectations plus the gate's type and new-id checks),
1M rows with 1% bad rows of every violation kind, one Parquet file of text (as an upstream hands it over).
Timed side by side in one process, interleaved, best of --repeat (wall and CPU seconds):

- ours (the number compared): `loopline.data.validation.gate.Gate` over the 250k-row chunks of the typed frame -
  numpy pass, row verdicts, clean/quarantine frames, and the GX audit run through a Checkpoint (COMPLETE on
  the rejected rows plus a 10k-row sample of the accepted ones, cross-checked row by row). Data Docs off,
  because the peer writes none (their cost is reported apart).
- ours from text: the same gate fed the text chunks the source reader yields (it parses every value, which
  the peer and the limit do not pay for: they start from the typed frame).
- peer: a plain GX 1.x ValidationDefinition with the same suite on the same typed frame, result_format
  COMPLETE with unexpected_index_column_names=[id] (what per-row quarantining needs).
- limit: the same checks as one vectorised numpy pass over the typed frame (+ write_deltalake of the clean
  and quarantine rows for the data-plane limit). With the stage, the data-plane limit is also timed in fresh
  child processes (like the stage), with the stage's allocator and with pyarrow's own; the fastest of the
  three counts (`details.limit_write`; `limit_write_in_bench` and `limit_write_fresh` keep each).
- the data stage (ingest + validate + features): `loopline.data.ingest.ingest_source` (read, gate,
  raw/clean/quarantine Delta commits, ledger) then `loopline.features.build_features`, on a fresh lake, each
  run in a child process of its own (so its peak RSS is its own), started with the environment the CLI and
  `loopline up`'s workers give a flow run (loopline.data.allocator), best of --stage-repeat. `details.stage_vs_limit`
  = its wall over the data-plane limit's, both from this run (goal <= 3).
- scaling: with several --rows, the stage runs once per size (a source above 1M rows repeats the 1M-row
  file's rows with fresh ids, one batch); `details.scaling` has wall, CPU, peak RSS and seconds per million
  rows for each (time should grow linearly; peak RSS at 10M must stay under 6 GB). The comparisons above
  run at 1M rows when 1M is among the sizes, else at the smallest.
Verdicts: the peer's failing ids per expectation must equal the numpy pass's on the same frame, and the
gate's counts must equal the peer's for every per-value expectation (uniqueness differs by design: GX fails
every member of a duplicate group, the gate quarantines later arrivals only).

    python -m bench data_plane [--rows 1000000 ...] [--bad-fraction 0.01] [--repeat 5] [--stage-repeat 2]
    python -m bench data_plane --rows 100000 1000000 10000000      # + details.scaling
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

import numpy as np
import pandas as pd

from bench.common import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEER_NAME = (
    "Great Expectations 1.24 ValidationDefinition, result_format COMPLETE + unexpected_index_column_names"
)
CHUNK_ROWS = 250_000


def timed_interleaved(contenders: dict, repeat: int) -> tuple[dict, dict]:
    """Best-of-`repeat` wall and CPU seconds per contender, taking turns (A, B, C, A, B, C, ...) so that
    load from other processes hits every contender alike; the best run is the least disturbed one."""
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict = {}
    for _ in range(repeat):
        for name, fn in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    times = {
        name: {"s": min(walls[name]), "cpu_s": min(cpus[name]), "all_s": [round(w, 3) for w in walls[name]]}
        for name in contenders
    }
    return times, results


BASE_ROWS = (
    1_000_000  # sources above this repeat the rows of this one (generating 10M rows at once needs ~10 GB)
)


def load_source(rows: int, bad_fraction: float, data_dir: Path):
    from loopline.config import SyntheticConfig
    from loopline.data.synthetic import generate_source

    data_dir.mkdir(parents=True, exist_ok=True)
    if rows > BASE_ROWS:
        return repeat_source(rows, bad_fraction, data_dir)
    return generate_source(SyntheticConfig(rows=rows, bad_fraction=bad_fraction, format="parquet"), data_dir)


def repeat_source(rows: int, bad_fraction: float, data_dir: Path) -> Path:
    """One Parquet file of `rows` rows: the 1M-row source's rows again and again, ids shifted by 1M each
    time (so they stay unique and the same share of rows is bad), written one row group at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = data_dir / f"demo-repeat-rows{rows}-bad{bad_fraction:g}.parquet"
    if path.exists():
        return path
    base_dir = data_dir.parent / f"r{BASE_ROWS}-b{bad_fraction:g}"
    base = pq.read_table(load_source(BASE_ROWS, bad_fraction, base_dir))
    id_at = base.schema.get_field_index("customer_id")
    ids = base.column(id_at)
    assert pa.types.is_integer(ids.type), "the synthetic source writes its ids as integers"
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, base.schema) as writer:
        for start in range(0, rows, BASE_ROWS):
            part = base.slice(0, min(BASE_ROWS, rows - start))
            shifted = pc.add(ids.slice(0, part.num_rows), start)
            writer.write_table(part.set_column(id_at, base.schema.field(id_at), shifted))
    tmp.rename(path)
    return path


def read_text_chunks(path: Path, contract) -> list[pd.DataFrame]:
    """The chunks exactly as ingest's reader yields them (text)."""
    from loopline.storage import sources

    src = sources.SourceFile(uri=str(path), local_path=str(path), fmt="parquet")
    return [c[contract.column_names] for c in sources.read_chunks(src, contract.column_names, CHUNK_ROWS)]


# -- the contenders ------------------------------------------------------------------------------------------
def typed_frame(text_chunks: list[pd.DataFrame], contract) -> pd.DataFrame:
    """The source's chunks parsed and joined: GX's fast dtypes on a RangeIndex (what peer and limit get)."""
    from loopline.data.validation.coerce import coerce_chunk
    from loopline.data.validation.gx import to_gx_frame

    return to_gx_frame(pd.concat([coerce_chunk(c, contract).frame for c in text_chunks], ignore_index=True))


def run_gate(contract, chunks: list[pd.DataFrame], docs_dir: str | None = None):
    from loopline.config import ValidationConfig
    from loopline.data.validation.gate import Gate

    cfg = ValidationConfig(data_docs=docs_dir is not None, quarantine_max_fraction=0.2)
    gate = Gate(
        contract, existing_ids=np.array([], dtype=np.int64), cfg=cfg, data_docs_dir=docs_dir, batch_id="bench"
    )
    offset = 0
    for chunk in chunks:
        gate.validate_chunk(chunk, row_offset=offset)
        offset += len(chunk)
    return gate.finish()


def make_peer(contract):
    """A plain GX setup: ephemeral context, pandas data source, the suite, one ValidationDefinition."""
    from loopline.data.validation.gx import import_gx
    from loopline.data.validation.suite import build_suite

    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # as the gate runs it
    batch = (
        context.data_sources.add_pandas("bench")
        .add_dataframe_asset("demo")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(build_suite(contract))
    return context.validation_definitions.add(gx.ValidationDefinition(name="bench", data=batch, suite=suite))


def run_peer(definition, frame: pd.DataFrame, id_column: str):
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)


def run_limit(contract, frame: pd.DataFrame, out_dir: Path | None):
    """The same checks as one numpy pass (+ plain write_deltalake of clean and quarantine rows)."""
    from loopline.data.validation.gx import evaluate
    from loopline.data.validation.suite import compile_checks

    masks = evaluate(frame, compile_checks(contract))
    bad = np.zeros(len(frame), dtype=bool)
    for mask in masks.values():
        bad |= mask
    if out_dir is not None:
        from deltalake import write_deltalake

        shutil.rmtree(out_dir, ignore_errors=True)
        write_deltalake(str(out_dir / "clean"), frame[~bad], mode="append")
        write_deltalake(str(out_dir / "quarantine"), frame[bad], mode="append")
    return masks


def run_ingest(contract, source: Path, home: Path):
    from loopline.config import LifecycleConfig
    from loopline.data.ingest import ingest_source
    from loopline.features import build_features
    from loopline.storage.lake import Lake

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cfg = LifecycleConfig(home=str(home))
    cfg.validation.quarantine_max_fraction = 0.2
    lake = Lake(root=str(home / "lake"))
    t0, c0 = time.perf_counter(), time.process_time()
    results = ingest_source(str(source), contract, lake, cfg)
    ingest = (time.perf_counter() - t0, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    features = build_features(lake, contract, cfg.features)
    feats = (time.perf_counter() - t0, time.process_time() - c0)
    return {
        "ingest": ingest,
        "features": feats,
        "results": [r.as_dict() for r in results],
        "features_result": features,
    }


# -- verdicts --------------------------------------------------------------------------------------------
def compare_verdicts(contract, frame: pd.DataFrame, peer_result, masks: dict, gate_verdict) -> dict:
    ids = frame[contract.id].to_numpy()
    mismatches = []
    peer_counts = {}
    for item in peer_result.results:
        key = item.expectation_config.meta["loopline_key"]
        peer_ids = {row[contract.id] for row in item.result.get("unexpected_index_list") or []}
        peer_counts[key] = int(item.result.get("unexpected_count") or 0)
        ours_ids = set(ids[masks[key]].tolist())
        if peer_ids != ours_ids or peer_counts[key] != int(masks[key].sum()):
            mismatches.append(f"{key}: peer {peer_counts[key]} rows, numpy {int(masks[key].sum())}")
    for entry in gate_verdict.per_expectation:
        key = f"{entry['column']}:{entry['check']}"
        if (
            entry["gx_expectation"]
            and entry["check"] != "unique"
            and entry["unexpected_count"] != peer_counts[key]
        ):
            mismatches.append(f"{key}: gate {entry['unexpected_count']} rows, peer {peer_counts[key]}")
    return {
        "identical": not mismatches,
        "mismatches": mismatches,
        "expectations": len(peer_counts),
        "failing_expectations": sum(1 for v in peer_counts.values() if v),
        "peer_unexpected_rows": int(sum(peer_counts.values())),
    }


# -- 10M rows, bounded memory ------------------------------------------------------------------------------
def run_big(rows: int, bad_fraction: float) -> dict:
    """The gate over `rows` generated chunk by chunk in a child process: time and peak RSS."""
    code = (
        f"import json,sys; sys.path.insert(0, {str(REPO)!r}); from bench.data_plane import big_child; "
        f"print(json.dumps(big_child({rows}, {bad_fraction!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=stage_env()
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> int:
    """This process's peak RSS (VmHWM; ru_maxrss would include the parent's RSS inherited at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def big_child(rows: int, bad_fraction: float) -> dict:
    """One 250k-row text chunk of the source, replayed with fresh ids until `rows` went through one gate."""
    from loopline.config import ValidationConfig
    from loopline.data.contracts import load_contract
    from loopline.data.validation.gate import Gate
    from loopline.data.validation.gx import import_gx

    import_gx()
    contract = load_contract(REPO / "contracts" / "demo.yaml")
    source = load_source(
        CHUNK_ROWS, bad_fraction, Path(f"/tmp/loopline-bench-data-plane/r{CHUNK_ROWS}-b{bad_fraction:g}")
    )
    (template,) = read_text_chunks(source, contract)
    gate = Gate(contract, cfg=ValidationConfig(data_docs=False, quarantine_max_fraction=0.2), batch_id="big")
    rss_start = peak_rss_mib()
    t0 = time.perf_counter()
    for offset in range(0, rows, CHUNK_ROWS):
        chunk = template.copy()
        chunk[contract.id] = pd.array((offset + np.arange(len(chunk))).astype(str), dtype="str")
        gate.validate_chunk(chunk, row_offset=offset)
    verdict = gate.finish()
    return {
        "rows": verdict.rows_in,
        "gate_s": round(time.perf_counter() - t0, 2),
        "rows_quarantined": verdict.rows_quarantined,
        "gx_rows_validated": verdict.gx_rows_validated,
        "gx_runs": len(verdict.gx_runs),
        "peak_rss_mib_before": rss_start,
        "peak_rss_mib": peak_rss_mib(),
    }


# -- the data stage, one child process per run ---------------------------------------------------------------
def run_stage(rows: int, bad_fraction: float, data_dir: Path) -> dict:
    """ingest_source + build_features over the `rows`-row source in a fresh child process: wall, CPU, peak RSS."""
    code = (
        f"import json,sys; sys.path.insert(0, {str(REPO)!r}); from bench.data_plane import stage_child; "
        f"print(json.dumps(stage_child({rows}, {bad_fraction!r}, {str(data_dir)!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=stage_env())
    if proc.returncode != 0:
        raise RuntimeError(f"the stage at {rows} rows failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stage_env(allocator: bool = True) -> dict[str, str]:
    """A child's environment as `loopline` (the CLI) or `loopline up`'s workers start a flow run: with
    loopline.data.allocator's settings; `allocator=False`: pyarrow's and glibc's own defaults."""
    from loopline.data.allocator import ARENAS_ENV, ARROW_POOL_ENV, OPT_OUT_ENV, allocator_env

    env = {k: v for k, v in os.environ.items() if k not in (ARENAS_ENV, ARROW_POOL_ENV, OPT_OUT_ENV)}
    if not allocator:
        return env | {OPT_OUT_ENV: "default"}
    return env | allocator_env(env)


# -- the data-plane limit, in a fresh process like the stage ----------------------------------------------
def run_limit_child(rows: int, bad_fraction: float, data_dir: Path, repeat: int, allocator: bool) -> dict:
    """`run_limit` with its writes, best of `repeat`, in a child process started like the stage's (the typed
    frame is built there, outside the timing): the limit is not charged for this process's heap of GX runs."""
    code = (
        f"import json,sys; sys.path.insert(0, {str(REPO)!r}); from bench.data_plane import limit_child; "
        f"print(json.dumps(limit_child({rows}, {bad_fraction!r}, {str(data_dir)!r}, {repeat})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=stage_env(allocator)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the limit at {rows} rows failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {
        "allocator": "loopline" if allocator else "default"
    }


def limit_child(rows: int, bad_fraction: float, data_dir: str, repeat: int) -> dict:
    from loopline.data.contracts import load_contract

    contract = load_contract(REPO / "contracts" / "demo.yaml")
    source = load_source(rows, bad_fraction, Path(data_dir))
    frame = typed_frame(read_text_chunks(source, contract), contract)
    work = Path(tempfile.mkdtemp(prefix="loopline-bench-limit-"))
    runs = []
    try:
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            run_limit(contract, frame, work / "limit")
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = min(runs)
    return {"s": best[0], "cpu_s": best[1], "all_s": [round(r[0], 3) for r in runs]}


def stage_child(rows: int, bad_fraction: float, data_dir: str) -> dict:
    from loopline.data.contracts import load_contract
    from loopline.data.validation.gx import import_gx

    import_gx()  # the ~6 s import is paid once per process, outside the timing (as in a warm worker)
    contract = load_contract(REPO / "contracts" / "demo.yaml")
    source = load_source(rows, bad_fraction, Path(data_dir))
    work = Path(tempfile.mkdtemp(prefix="loopline-bench-stage-"))
    try:
        rss_start = peak_rss_mib()
        run = run_ingest(contract, source, work / "home")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (result,) = run["results"]
    return {
        "rows": rows,
        "s": round(run["ingest"][0] + run["features"][0], 3),
        "cpu_s": round(run["ingest"][1] + run["features"][1], 3),
        "ingest_s": round(run["ingest"][0], 3),
        "ingest_cpu_s": round(run["ingest"][1], 3),
        "features_s": round(run["features"][0], 3),
        "features_cpu_s": round(run["features"][1], 3),
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_mib_before": rss_start,
        "result": {k: result[k] for k in ("rows_in", "rows_clean", "rows_quarantined", "accepted")},
        "features_rows": run["features_result"]["rows_added"],
    }


def scaling(runs: dict[int, dict]) -> dict:
    """Per size: wall, CPU, peak RSS, seconds per million rows; `linearity`: the largest s/M over the smallest
    (1.0 = time grows exactly linearly)."""
    sizes = [
        {
            "rows": rows,
            "s": run["s"],
            "cpu_s": run["cpu_s"],
            "peak_rss_mib": run["peak_rss_mib"],
            "s_per_million_rows": round(run["s"] / rows * 1e6, 3),
        }
        for rows, run in sorted(runs.items())
    ]
    out: dict = {"sizes": sizes}
    if len(sizes) >= 2:  # s = fixed + per_row * rows, least squares: linear when the fit is close everywhere
        rows = np.array([x["rows"] for x in sizes], dtype=float)
        secs = np.array([x["s"] for x in sizes], dtype=float)
        per_row, fixed = np.polyfit(rows, secs, 1)
        fit = fixed + per_row * rows
        out["fit"] = {
            "fixed_s": round(float(fixed), 3),
            "s_per_million_rows": round(float(per_row) * 1e6, 3),
            "max_relative_deviation": round(float(np.max(np.abs(secs - fit) / secs)), 3),
        }
        big = [x for x in sizes if x["rows"] >= BASE_ROWS]
        if len(big) >= 2:  # past the fixed costs: s per row at the largest size over at 1M
            out["s_per_row_largest_vs_1m"] = round(
                big[-1]["s_per_million_rows"] / big[0]["s_per_million_rows"], 3
            )
    return out


# -- report ------------------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    d = result["details"]
    rows = [
        ("validate: ours (gate, typed chunks, GX audit)", d["ours"]),
        ("validate: ours from text (parses every value)", d["ours_text"]),
        ("validate: ours + Data Docs", d["ours_docs"]),
        (f"validate: peer ({result['peer_name'][:38]})", d["peer"]),
        ("validate: limit (numpy pass)", d["limit"]),
        ("data plane limit (numpy + write_deltalake)", d["limit_write"]),
    ]
    if "ingest" in d:
        rows += [
            ("ingest_source (ours, from the file)", d["ingest"]),
            ("build_features (ours)", d["features"]),
            ("data stage: ingest + validate + features (ours)", d["stage"]),
        ]
    for fresh in d.get("limit_write_fresh", []):
        rows.append((f"data plane limit, fresh process ({fresh['allocator']} allocator)", fresh))
    if "limit_write_in_bench" in d:
        rows.append(("data plane limit, in this process", d["limit_write_in_bench"]))
    print(
        f"\nbench/data_plane  {result['params']['rows']:,} rows x 38 columns, {result['params']['bad_fraction']:.0%} bad"
    )
    load = d.get("load_average", {})
    print(f"on {result['machine']}, load average {load.get('start')} -> {load.get('end')}\n")
    print(f"{'':56s} {'wall s':>8s} {'cpu s':>8s}")
    for label, t in rows:
        print(f"{label:56s} {t['s']:8.3f} {t['cpu_s']:8.3f}")
    print(f"\nratio peer/ours: {result['ratio']:.2f}x wall, {d['ratio_cpu']:.2f}x cpu (goal >= 2x)")
    print(f"verdicts identical: {d['verdicts']['identical']} {d['verdicts']['mismatches'][:3]}")
    if "stage_vs_limit" in d:
        print(
            f"data stage / data-plane limit: {d['stage_vs_limit']:.2f}x wall (goal <= 3), "
            f"peak RSS {d['stage']['peak_rss_mib']} MiB"
        )
    if "scaling" in d:
        print(f"\n{'rows':>12s} {'wall s':>8s} {'cpu s':>8s} {'s per 1M':>9s} {'peak RSS MiB':>13s}")
        for x in d["scaling"]["sizes"]:
            print(
                f"{x['rows']:12,d} {x['s']:8.2f} {x['cpu_s']:8.2f} {x['s_per_million_rows']:9.2f} "
                f"{x['peak_rss_mib']:13d}"
            )
        if "fit" in d["scaling"]:
            f = d["scaling"]["fit"]
            print(
                f"linear fit: {f['fixed_s']:.2f} s + {f['s_per_million_rows']:.2f} s per 1M rows, "
                f"largest deviation {f['max_relative_deviation']:.0%}"
            )
    if "big" in d:
        b = d["big"]
        print(f"{b['rows']:,} rows through the gate: {b['gate_s']} s, peak RSS {b['peak_rss_mib']} MiB")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench data_plane", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1_000_000],
        help="rows in the batch; several sizes add details.scaling (the comparisons run at 1M, else the smallest)",
    )
    parser.add_argument("--bad-fraction", type=float, default=0.01, help="share of rows with a violation")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per contender, interleaved (best counts)"
    )
    parser.add_argument("--skip-ingest", action="store_true", help="skip the data stage (ingest + features)")
    parser.add_argument(
        "--stage-repeat",
        type=int,
        default=2,
        help="data stage runs at the compared size and below (best counts); larger sizes run once",
    )
    parser.add_argument(
        "--big-rows", type=int, default=0, help="also push this many rows through the gate (child)"
    )
    parser.add_argument("--data-dir", default=None, help="where the source file is cached")
    args = parser.parse_args(argv)

    from loopline.data.contracts import load_contract
    from loopline.data.validation.gx import import_gx

    import_gx()  # import cost (about 6 s) is paid once, outside every timing
    load_start = [round(x, 2) for x in os.getloadavg()]
    contract = load_contract(REPO / "contracts" / "demo.yaml")
    sizes = sorted(set(args.rows))
    rows = BASE_ROWS if BASE_ROWS in sizes else sizes[0]  # the size the comparisons run at

    def data_dir(n: int) -> Path:
        return Path(args.data_dir or f"/tmp/loopline-bench-data-plane/r{n}-b{args.bad_fraction:g}")

    source = load_source(rows, args.bad_fraction, data_dir(rows))
    text_chunks = read_text_chunks(source, contract)
    frame = typed_frame(text_chunks, contract)  # the frame peer and limit see
    typed_chunks = [frame.iloc[i : i + CHUNK_ROWS] for i in range(0, len(frame), CHUNK_ROWS)]
    definition = make_peer(contract)
    work = Path(tempfile.mkdtemp(prefix="loopline-bench-"))
    details: dict = {}
    try:
        times, results = timed_interleaved(
            {
                "ours": lambda: run_gate(contract, typed_chunks),
                "peer": lambda: run_peer(definition, frame, contract.id),
                "ours_text": lambda: run_gate(contract, text_chunks),
                "limit": lambda: run_limit(contract, frame, None),
                "limit_write": lambda: run_limit(contract, frame, work / "limit"),
            },
            args.repeat,
        )
        docs_times, _ = timed_interleaved(
            {"ours_docs": lambda: run_gate(contract, typed_chunks, str(work / "docs"))}, 1
        )
        details.update(times | docs_times)
        verdict, peer_result, masks = results["ours"], results["peer"], results["limit"]
        details["verdicts"] = compare_verdicts(contract, frame, peer_result, masks, verdict)
        details["gate"] = {
            "rows_quarantined": verdict.rows_quarantined,
            "gx_rows_validated": verdict.gx_rows_validated,
            "gx_runs": len(verdict.gx_runs),
        }
        if not args.skip_ingest:
            stages: dict[int, dict] = {}
            for n in sizes:
                load_source(n, args.bad_fraction, data_dir(n))  # generated outside every timing
                runs = [
                    run_stage(n, args.bad_fraction, data_dir(n))
                    for _ in range(max(1, args.stage_repeat) if n <= rows else 1)  # sizes above: once
                ]
                stages[n] = min(runs, key=lambda r: r["s"]) | {"all_s": [r["s"] for r in runs]}
            best = stages[rows]
            # the limit in fresh processes too, with and without the stage's allocator; the faster counts
            fresh = [
                run_limit_child(rows, args.bad_fraction, data_dir(rows), args.repeat, allocator)
                for allocator in (True, False)
            ]
            details["limit_write_in_bench"] = details["limit_write"]
            details["limit_write_fresh"] = fresh
            details["limit_write"] = min([details["limit_write"], *fresh], key=lambda r: r["s"])
            details["ingest"] = {"s": best["ingest_s"], "cpu_s": best["ingest_cpu_s"]}
            details["features"] = {"s": best["features_s"], "cpu_s": best["features_cpu_s"]}
            details["stage"] = {
                "s": best["s"],
                "cpu_s": best["cpu_s"],
                "all_s": best["all_s"],
                "peak_rss_mib": best["peak_rss_mib"],
            }
            details["stage_vs_limit"] = best["s"] / details["limit_write"]["s"]
            details["stage_vs_limit_cpu"] = best["cpu_s"] / details["limit_write"]["cpu_s"]
            details["ingest_result"] = best["result"]
            if len(sizes) > 1:
                details["scaling"] = scaling(stages)
        if args.big_rows:
            details["big"] = run_big(args.big_rows, args.bad_fraction)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    details["ratio_cpu"] = details["peer"]["cpu_s"] / details["ours"]["cpu_s"]
    details["load_average"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    result = {
        "name": "data_plane",
        "machine": machine(),
        "params": {
            "rows": rows,
            "sizes": sizes,
            "bad_fraction": args.bad_fraction,
            "columns": len(contract.columns),
            "gx_expectations": details["verdicts"]["expectations"],
            "chunk_rows": CHUNK_ROWS,
            "repeat": args.repeat,
            "metric": "seconds to validate one batch with per-row verdicts (best of repeat, wall)",
        },
        "ours": details["ours"]["s"],
        "peer": details["peer"]["s"],
        "ratio": details["peer"]["s"] / details["ours"]["s"],
        "unit": "s",
        "peer_name": PEER_NAME,
        "details": details,
    }
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "data_plane.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")
    return result


if __name__ == "__main__":
    main()
