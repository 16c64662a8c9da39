"""A fault-injecting reverse proxy for an S3 endpoint (moto_server in the tests), in a process of its own.

Every request is forwarded to the upstream endpoint as is (the Host header too: SigV4 signs it, and moto
does not check signatures). With probability `rate` (a seeded RNG) a request gets one fault instead:

- `slowdown`: 503 with S3's `SlowDown` XML error body, before forwarding (nothing happened upstream, as
  on S3, where a throttled request is not applied).
- `reset`: the request is forwarded and applied, then the client gets the status line, the headers and half
  of the body (half of the headers when there is no body), and the connection is closed with SO_LINGER 0,
  so the kernel sends RST. The response is lost, the write landed: what a client sees when a network path
  dies mid-response (exceptions below).
- `stall`: the proxy waits `stall_seconds` before forwarding (a slow S3 front end or a congested path).
  A client that gave up meanwhile (its read timeout) is not forwarded to: its request never landed.

Where a reset lands depends on what the client can survive, measured with these clients:
- A conditional PUT (`If-None-Match` / `If-Match`: delta-rs commits `_delta_log/N.json` this way) whose
  response is lost is not retry-safe: a retried PUT would get 412 although the first one landed, and the
  client cannot tell its own commit from a concurrent writer's. object_store 0.13.2 (deltalake 1.6.6) does
  not retry it at all: a reset or timeout of a commit, before or after it landed, is an error of the write.
  `commit_resets` says what a reset drawn for a conditional PUT does: "lost" (forward, then reset: the commit
  landed, the client gets an error), "unsent" (reset before forwarding: nothing landed) or "as_503" (the
  default: answer 503 SlowDown instead, which every client retries).
- object_store reads a LIST body and an error (4xx) body after its retry loop has ended, so a break there is
  an error too; for clients whose User-Agent holds one of `headers_only_agents` those responses are reset
  before their first byte (a reset object_store retries). Object GETs and PUTs still break mid-body.

Faults are counted by kind (slowdown, reset, stall), with details beside them (`reset_mid_body`,
`reset_before_response`, `commit_lost`, `commit_unsent`, `commit_reset_as_503`, `stall_client_gave_up`).
`max_stalls` caps the stalls (each costs wall time); once spent, a stall draw becomes another kind, so the
fault rate stays `rate`. `only_commits` keeps random faults to conditional PUTs; `script` forces the faults
of the next requests (a deterministic test of a retry budget).

Why a process of its own: deltalake 1.6.6's `DeltaTable.history()` holds the GIL while it waits for S3, so a
proxy on threads of the test's own process never gets to answer it (measured: a 180 s hang per call).
`FaultProxy` is the test's handle: it starts the process and sets and reads it through `/__proxy__/`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("slowdown", "reset", "stall")
SETTINGS = ("rate", "kinds", "stall_seconds", "max_stalls", "commit_resets", "only_commits", "script")
CONTROL = "/__proxy__/"
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"
}  # fmt: skip
SLOWDOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request '
    "rate.</Message><Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
)


class FaultProxy:
    """The test's handle: `FaultProxy(upstream, rate=0.2).start()`; `.url` is the endpoint clients use;
    settings are attributes (`proxy.rate = 0.2`), counts are read live (`proxy.faults`); `.stop()`."""

    def __init__(self, upstream: str, *, seed: int = 0, **settings):
        self.upstream, self.seed, self.initial = upstream, seed, settings
        self.url = ""
        self._proc: subprocess.Popen | None = None

    def start(self) -> FaultProxy:
        cmd = [sys.executable, __file__, self.upstream, "--seed", str(self.seed)]  # stdlib only: no imports
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self._proc.stdout.readline().strip()  # the process prints its URL once it listens
        if not self.url:
            raise RuntimeError(f"the S3 fault proxy did not start (exit {self._proc.poll()})")
        self.configure(**self.initial)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def configure(self, **settings) -> None:
        self._call("config", settings)

    def reset_counts(self) -> None:
        self._call("reset", {})

    def state(self) -> dict:
        return self._call("state", None)

    def __getattr__(self, name: str):
        if name in ("faults", "clients"):
            return Counter(self.state()[name])
        if name in ("requests", "errors", *SETTINGS):
            return self.state()[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name in SETTINGS:
            self.configure(**{name: value})
        else:
            super().__setattr__(name, value)

    def _call(self, what: str, body: dict | None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(f"{self.url}{CONTROL}{what}", data=data, timeout=30) as resp:
            return json.loads(resp.read())


class FaultState:
    """The proxy process's settings, RNG and counts (shared by its handler threads)."""

    def __init__(self, upstream: str, seed: int):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self.settings = {
            "rate": 0.0, "kinds": list(KINDS), "stall_seconds": 2.0, "max_stalls": None,
            "commit_resets": "as_503", "only_commits": False, "script": [],
        }  # fmt: skip
        self.headers_only_agents = ("object_store/",)
        self.faults: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()  # requests by client (User-Agent's first word)
        self.requests = 0
        self.errors: list[str] = []  # upstream trouble (not injected): a test asserts it stays empty
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def control(self, what: str, body: dict | None) -> bytes:
        with self.lock:
            if what == "config":
                unknown = set(body) - set(SETTINGS)
                if unknown or body.get("commit_resets", "as_503") not in ("lost", "unsent", "as_503"):
                    raise ValueError(f"bad proxy settings: {body}")
                self.settings.update(body)
            elif what == "reset":
                self.faults.clear()
                self.clients.clear()
                self.requests = 0
            return json.dumps({
                **self.settings, "faults": self.faults, "clients": self.clients,
                "requests": self.requests, "errors": self.errors,
            }).encode()  # fmt: skip

    def draw(self, agent: str, conditional: bool) -> str | None:
        """The fault for the next request (`conditional`: a conditional PUT), or None to forward it."""
        s = self.settings
        with self.lock:
            self.requests += 1
            self.clients[agent.split(" ")[0].split("/")[0] or "?"] += 1
            if s["script"]:  # forced faults first, in order (None: forward untouched)
                kind = s["script"].pop(0)
            elif (s["only_commits"] and not conditional) or self.rng.random() >= s["rate"]:
                return None
            else:
                kinds = list(s["kinds"])
                if s["max_stalls"] is not None and self.faults["stall"] >= s["max_stalls"] and len(kinds) > 1:
                    kinds.remove("stall")
                kind = self.rng.choice(kinds)
                if kind == "reset" and conditional and s["commit_resets"] == "as_503":
                    kind = "slowdown"
                    self.faults["commit_reset_as_503"] += 1
            if kind is not None:
                self.faults[kind] += 1
            return kind

    def count(self, what: str) -> None:
        with self.lock:
            self.faults[what] += 1


class Handler(BaseHTTPRequestHandler):
    state: FaultState
    protocol_version = "HTTP/1.1"  # keep-alive, as SDK clients expect

    def log_message(self, format, *args):  # noqa: A002 - quiet: the counts are the log
        pass

    def do_GET(self):
        if self.path.startswith(CONTROL):
            return self._control()
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _control(self) -> None:
        body = self._read_body()
        payload = self.state.control(self.path[len(CONTROL) :], json.loads(body) if body else None)
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _proxy(self) -> None:
        body, state = self._read_body(), self.state
        conditional = self.command == "PUT" and (
            "If-None-Match" in self.headers or "If-Match" in self.headers
        )
        kind = state.draw(self.headers.get("User-Agent", ""), conditional)
        if kind == "slowdown":
            return self._slowdown()
        if kind == "stall":
            time.sleep(state.settings["stall_seconds"])
            if self._client_gone():
                state.count("stall_client_gave_up")
                self.close_connection = True
                return
        if kind == "reset" and conditional and state.settings["commit_resets"] == "unsent":
            state.count("commit_unsent")
            return self._reset(b"")
        try:
            status, reason, headers, payload = self._forward(body)
        except OSError as exc:  # the endpoint itself failed: not an injected fault
            state.errors.append(f"{self.command} {self.path}: {exc!r}")
            return self._reset(b"")
        head = self._head(status, reason, headers, payload)
        if kind != "reset":
            self.wfile.write(head + (b"" if self.command == "HEAD" else payload))
            return
        if conditional:
            state.count("commit_lost")  # it landed, and the client will not know
        if self._body_read_outside_retries(status):
            state.count("reset_before_response")
            return self._reset(b"")
        state.count("reset_mid_body")
        self._reset(head + payload[: len(payload) // 2] if payload else head[: len(head) // 2])

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.state.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _head(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        for k, v in headers:
            if k.lower() in HOP_BY_HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                continue
            lines.append(f"{k}: {v}")
        if self.command != "HEAD" and status not in (204, 304):
            lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _slowdown(self) -> None:
        resource, request_id = self.path.split("?")[0], f"fault-{random.getrandbits(48):x}"
        payload = SLOWDOWN_BODY.format(resource=resource, request_id=request_id).encode()
        payload = b"" if self.command == "HEAD" else payload
        self.send_response(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self, sent: bytes) -> None:
        """Send `sent`, then close with RST (SO_LINGER 0) instead of FIN."""
        sock = self.connection
        try:
            if sent:
                sock.sendall(sent)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass
        self.close_connection = True

    def _body_read_outside_retries(self, status: int) -> bool:
        """A LIST or an error response, for a client in `headers_only_agents` (see the module docstring)."""
        if not any(a in self.headers.get("User-Agent", "") for a in self.state.headers_only_agents):
            return False
        path, _, query = self.path.partition("?")
        return (
            self.command == "GET" and ("list-type" in query or "/" not in path.strip("/"))
        ) or status >= 300

    def _client_gone(self) -> bool:
        """True when the client closed its end while we stalled (it timed out and will retry)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # SDK clients open connections in bursts; the default 5 drops some
    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser(description="S3 fault proxy (tests/reliability)")
    parser.add_argument("upstream")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    Handler.state = FaultState(args.upstream, args.seed)
    server = Server(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # the test process holds our stdin: when it ends, however it ends, so does the proxy


if __name__ == "__main__":
    main()
