"""A closed-loop HTTP load generator, run as its own process so it never shares an interpreter with a server.

N clients, each on one keep-alive connection, send the same POST body back to back for a fixed time
(after a warm-up) and record every latency. The client is a few lines of raw HTTP/1.1 on asyncio streams
(uvloop when installed): cheaper per request than a general HTTP client, so more of the machine's CPU goes
to the server under test, and identical for every server compared.

    python -m bench.loadgen --url http://127.0.0.1:8080/invocations --body-file req.json \
        --clients 16 --seconds 10 [--warmup-seconds 2] [--header X-Request-Key:abc]

Prints one JSON object: clients, requests, errors (non-2xx or broken connections), statuses, rps,
p50_ms, p90_ms, p99_ms, mean_ms, max_ms, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import numpy as np


def _request_bytes(url: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
        *[f"{k}: {v}" for k, v in headers],
    ]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response; returns the status code (the body is read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _client(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    record_from: float,
    out: list,
    errors: list,
    statuses: dict,
):
    reader = writer = None
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            ended = time.perf_counter()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            if started >= record_from:
                errors.append(1)
                statuses["conn_error"] = statuses.get("conn_error", 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        if started >= record_from:
            out.append(ended - started)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status >= 300:
                errors.append(1)
    if writer is not None:
        writer.close()


async def run_load(
    url: str,
    body: bytes,
    *,
    clients: int,
    seconds: float,
    warmup_seconds: float,
    headers: list[tuple[str, str]],
) -> dict:
    host, port, request = _request_bytes(url, body, headers)
    start = time.perf_counter()
    record_from = start + warmup_seconds
    stop_at = record_from + seconds
    latencies: list[float] = []
    errors: list[int] = []
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *[
            _client(host, port, request, stop_at, record_from, latencies, errors, statuses)
            for _ in range(clients)
        ]
    )
    elapsed = min(time.perf_counter(), stop_at + 60) - max(record_from, started)
    lat = np.array(latencies) * 1000.0
    ok = sum(n for code, n in statuses.items() if code.startswith("2"))
    return {
        "clients": clients,
        "requests": len(latencies),
        "ok": ok,
        "errors": len(errors),
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 3) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
        "mean_ms": round(float(lat.mean()), 3) if lat.size else None,
        "max_ms": round(float(lat.max()), 3) if lat.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--header", action="append", default=[], help="Name:value (repeatable)")
    args = parser.parse_args(argv)
    with open(args.body_file, "rb") as fh:
        body = fh.read()
    headers = [tuple(h.split(":", 1)) for h in args.header]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run_load(
            args.url,
            body,
            clients=args.clients,
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            headers=headers,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
