"""bench/overload: `loopline serve` at 4x the rate it can sustain, then back to a normal load.

The model is trained and registered by the real pipeline (as in bench/serving). First the sustainable rate
is measured on the same server in the same run (closed-loop clients, bench/loadgen): that is the limit this
benchmark compares with. Then an open-loop generator sends `factor` x that rate for `seconds` (requests go
out on schedule whether or not earlier ones were answered, as real traffic does, each on a free keep-alive
connection), while the server's RSS is sampled every 0.1 s. Reported: goodput (200s/s) against the
sustainable rate, the share of 503s and whether each carried Retry-After and a JSON body, other 5xx,
timeouts, p99 of admitted requests, peak RSS against the RSS before the overload, and recovery: at half
the sustainable rate right after, how long until the first 200 and the share of 200s in the first second.

    python -m bench overload [--seconds 30] [--factor 4] [--rows 100] [--capacity-seconds 5]
        [--recovery-seconds 5] [--server-args "--max-queue-rows 4096"] [--max-steps 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.common import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


# -- open-loop load -------------------------------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def open_loop(
    url: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    max_connections: int = 512,
    timeout_s: float = 10.0,
) -> dict:
    """`rate` requests/s for `seconds` on schedule. A request finds a free keep-alive connection or opens
    one (up to `max_connections`; past that it is counted `not_sent`, the client's own limit). Returns
    counts by status, timeouts, connection errors, 503s lacking Retry-After or a JSON error body, the
    latencies of 200s and the time of the first 200."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    out = {"statuses": {}, "timeouts": 0, "conn_errors": 0, "not_sent": 0, "bad_503": 0, "late_ms_max": 0.0}
    ok_latencies: list[float] = []
    first_ok: list[float] = []
    opened = [0]
    start = time.perf_counter()

    async def one() -> None:
        if idle:
            conn = idle.pop()
        elif opened[0] < max_connections:
            opened[0] += 1
            try:
                conn = await asyncio.open_connection(host, port)
            except OSError:
                opened[0] -= 1
                out["conn_errors"] += 1
                return
        else:
            out["not_sent"] += 1
            return
        reader, writer = conn
        sent = time.perf_counter()
        try:
            writer.write(request)
            status, headers, data = await asyncio.wait_for(_read_response(reader), timeout_s)
        except TimeoutError:
            out["timeouts"] += 1
            writer.close()
            opened[0] -= 1
            return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            out["conn_errors"] += 1
            writer.close()
            opened[0] -= 1
            return
        done = time.perf_counter()
        out["statuses"][str(status)] = out["statuses"].get(str(status), 0) + 1
        if status == 200:
            ok_latencies.append(done - sent)
            if not first_ok:
                first_ok.append(done - start)
        elif status == 503 and not _good_503(headers, data):
            out["bad_503"] += 1
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
            opened[0] -= 1
        else:
            idle.append(conn)

    tasks = []
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            out["late_ms_max"] = max(out["late_ms_max"], -delay * 1000)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    lat = np.array(ok_latencies) * 1000
    ok = out["statuses"].get("200", 0)
    return {
        **out,
        "sent": total,
        "target_rps": round(rate, 1),
        "offered_rps": round(total / max(elapsed, 1e-9), 1),
        "seconds": round(elapsed, 2),
        "ok": ok,
        "ok_rps": round(ok / seconds, 1),
        "share_503": round(out["statuses"].get("503", 0) / max(total, 1), 4),
        "other_5xx": sum(n for s, n in out["statuses"].items() if s.startswith("5") and s != "503"),
        "p50_ok_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ok_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "first_ok_s": round(first_ok[0], 3) if first_ok else None,
    }


def _good_503(headers: dict[bytes, bytes], data: bytes) -> bool:
    try:
        return headers.get(b"retry-after", b"").isdigit() and bool(json.loads(data).get("error_code"))
    except (ValueError, AttributeError):
        return False


class RssSampler:
    """The server's resident memory every `every_s`, on a thread (psutil)."""

    def __init__(self, pid: int, every_s: float = 0.1):
        import psutil

        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), self.proc.memory_info().rss))
            except Exception:  # the process went away
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, since: float = 0.0) -> float:
        values = [r for t, r in self.samples if t >= since]
        return round(max(values) / 2**20, 1) if values else 0.0


def scrape(url: str) -> dict:
    """The server's own count of answered scoring requests (200) and its latency histogram (cumulative
    bucket counts, all versions): figures the load generator's own CPU starvation cannot skew."""
    import httpx

    ok, buckets = 0.0, {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith('loopline_serving_requests_total{code="200",route="invocations"}'):
            ok = float(line.split()[-1])
        elif line.startswith("loopline_serving_request_latency_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = buckets.get(le, 0.0) + float(line.split()[-1])
    return {"ok": ok, "buckets": buckets, "at": time.perf_counter()}


def server_side(before: dict, after: dict) -> dict:
    """200s per second and the p99 latency bucket (upper bound, seconds) between two scrapes."""
    seconds = after["at"] - before["at"]
    delta = {le: after["buckets"].get(le, 0.0) - before["buckets"].get(le, 0.0) for le in after["buckets"]}
    total = delta.get("+Inf", 0.0)
    p99 = None
    for le, count in sorted(delta.items(), key=lambda kv: float(kv[0])):
        if total and count >= 0.99 * total:
            p99 = le
            break
    return {"ok_rps": round((after["ok"] - before["ok"]) / seconds, 1), "p99_le_s": p99, "answered": total}


async def recovery(url: str, body: bytes, rate: float, seconds: float) -> dict:
    """Right after the overload: a first-second probe at `rate`, then the rest of `seconds`."""
    first = await open_loop(url, body, rate=rate, seconds=1.0)
    rest = await open_loop(url, body, rate=rate, seconds=max(seconds - 1.0, 1.0))
    return {
        "first_ok_s": first["first_ok_s"],
        "ok_share_first_second": round(first["ok"] / max(first["sent"], 1), 4),
        "ok_share_after": round(rest["ok"] / max(rest["sent"], 1), 4),
        "p99_ok_ms": rest["p99_ok_ms"],
        "statuses": {"first_second": first["statuses"], "after": rest["statuses"]},
    }


# -- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench overload", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="overload duration")
    parser.add_argument("--factor", type=float, default=4.0, help="overload rate / sustainable rate")
    parser.add_argument("--rows", type=int, default=100, help="rows per request")
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients measuring capacity")
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--recovery-seconds", type=float, default=5.0)
    parser.add_argument("--server-args", default="", help="extra `python -m loopline.serving` options")
    parser.add_argument("--max-steps", type=int, default=60, help="training steps of the benchmark model")
    parser.add_argument("--keep", action="store_true", help="keep the scratch LOOPLINE_HOME")
    args = parser.parse_args(argv)
    from bench.loadgen import run_load
    from bench.serving import build_model, request_bodies, start_ours, stop, wait_ready

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    home = Path(tempfile.mkdtemp(prefix="loopline-bench-overload-"))
    print(f"building the model with the real pipeline in {home} ...", flush=True)
    info = build_model(home, max_steps=args.max_steps)
    body = request_bodies(info["contract"], home, [args.rows])[args.rows].read_bytes()
    proc, url = start_ours(info, home, "--poll-seconds", "0", *shlex.split(args.server_args))
    try:
        wait_ready(proc, url)
        invocations = f"{url}/invocations"
        capacity = asyncio.run(
            run_load(
                invocations,
                body,
                clients=args.clients,
                seconds=args.capacity_seconds,
                warmup_seconds=1.0,
                headers=[],
            )
        )
        sustainable = capacity["ok"] / capacity["seconds"]
        print(f"sustainable: {sustainable:.1f} req/s (p99 {capacity['p99_ms']} ms); overloading", flush=True)
        with RssSampler(proc.pid) as rss:
            time.sleep(0.5)
            before_mb = rss.peak_mb()
            started, counted = time.perf_counter(), scrape(url)
            overload = asyncio.run(
                open_loop(invocations, body, rate=args.factor * sustainable, seconds=args.seconds)
            )
            overload["server"] = server_side(counted, scrape(url))
            peak_mb = rss.peak_mb(since=started)
            recovered = asyncio.run(recovery(invocations, body, sustainable / 2, args.recovery_seconds))
            end_mb = rss.peak_mb(since=time.perf_counter() - 0.3)
    finally:
        stop(proc)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    report(args, capacity, sustainable, overload, recovered, before_mb, peak_mb, end_mb)


def report(args, capacity, sustainable, overload, recovered, before_mb, peak_mb, end_mb) -> None:
    goodput = overload["ok_rps"]
    print(
        f"\noverload {args.factor}x for {args.seconds:.0f} s: offered {overload['offered_rps']} req/s "
        f"(target {overload['target_rps']}; the generator ran up to {overload['late_ms_max']:.0f} ms late), "
        f"goodput {goodput} req/s vs sustainable {sustainable:.1f}\n"
        f"  503 share {overload['share_503']:.1%} (without Retry-After/JSON: {overload['bad_503']}), "
        f"other 5xx {overload['other_5xx']}, timeouts {overload['timeouts']}, "
        f"connection errors {overload['conn_errors']}, not sent (client at its connection cap) "
        f"{overload['not_sent']}, p99 admitted {overload['p99_ok_ms']} ms\n"
        f"  server side: {overload['server']['ok_rps']} x 200/s, p99 <= {overload['server']['p99_le_s']} s\n"
        f"  RSS {before_mb} MB before, peak {peak_mb} MB, {end_mb} MB after\n"
        f"  recovery at {sustainable / 2:.0f} req/s: first 200 after {recovered['first_ok_s']} s, "
        f"200 share {recovered['ok_share_first_second']:.1%} in the first second, "
        f"{recovered['ok_share_after']:.1%} after, p99 {recovered['p99_ok_ms']} ms"
    )
    result = {
        "name": "overload",
        "machine": machine(),
        "params": {
            "factor": args.factor,
            "seconds": args.seconds,
            "rows_per_request": args.rows,
            "capacity_clients": args.clients,
            "capacity_seconds": args.capacity_seconds,
            "server_args": args.server_args,
            "headline": "goodput (200s/s) under the overload against the sustainable rate of the same run",
        },
        "ours": goodput,
        "peer": round(sustainable, 1),
        "ratio": round(goodput / sustainable, 3) if sustainable else None,
        "unit": "requests/s",
        "peer_name": "the same server's sustainable rate (closed-loop clients, same run): the limit",
        "details": {
            "capacity": capacity,
            "overload": overload,
            "rss_mb": {"before": before_mb, "peak": peak_mb, "after": end_mb},
            "recovery": recovered,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overload.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'overload.json'}")
