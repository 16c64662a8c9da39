"""A fault-injecting reverse proxy for an S3 endpoint (moto_server in the tests).

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
Faults are counted by kind in `faults` (slowdown, reset, stall), with details beside them
(`reset_mid_body`, `reset_before_response`, `commit_lost`, `commit_unsent`, `commit_reset_as_503`,
`stall_client_gave_up`).

`only_commits` keeps the random faults to conditional PUTs. `script` forces the faults of the next requests (a deterministic test of a retry budget). `max_stalls` caps the stalls (each costs wall time); once spent, a stall draw becomes another kind, so
the overall fault rate stays `rate`.
"""

from __future__ import annotations

import http.client
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("slowdown", "reset", "stall")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}
SLOWDOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
)


class FaultProxy:
    """`FaultProxy(upstream, rate=0.2).start()`; `.url` is the endpoint clients use; `.stop()` when done."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        stall_seconds: float = 2.0,
        max_stalls: int | None = None,
        commit_resets: str = "as_503",
        headers_only_agents: tuple[str, ...] = ("object_store/",),
    ):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.rate = rate
        self.kinds = tuple(kinds)
        self.stall_seconds = stall_seconds
        self.max_stalls = max_stalls
        if commit_resets not in ("lost", "unsent", "as_503"):
            raise ValueError(f"commit_resets={commit_resets!r}: expected lost, unsent or as_503")
        self.commit_resets = commit_resets
        self.headers_only_agents = headers_only_agents
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self.clients: Counter[str] = Counter()  # requests by client (User-Agent's first word)
        self.script: list[str | None] = []  # faults for the next requests, before any random draw
        self.only_commits = False  # True: random faults for conditional PUTs only
        self.errors: list[str] = []  # upstream trouble (not injected): a test asserts it stays empty
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # SDK clients open connections in bursts; the default 5 drops some
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def injected(self) -> int:
        return sum(self.faults[k] for k in KINDS)

    def reset_counts(self) -> None:
        with self._lock:
            self.faults.clear()
            self.clients.clear()
            self.requests = 0

    # -- the fault draw ----------------------------------------------------------------------------
    def draw(self, agent: str = "", conditional: bool = False) -> str | None:
        """The fault for the next request (`conditional`: a conditional PUT), or None to forward it."""
        with self._lock:
            self.requests += 1
            self.clients[agent.split(" ")[0].split("/")[0] or "?"] += 1
            if self.script:  # forced faults first, in order (None: forward untouched)
                kind = self.script.pop(0)
                if kind is not None:
                    self.faults[kind] += 1
                return kind
            if (self.only_commits and not conditional) or self._rng.random() >= self.rate:
                return None
            kinds = list(self.kinds)
            if self.max_stalls is not None and self.faults["stall"] >= self.max_stalls and len(kinds) > 1:
                kinds = [k for k in kinds if k != "stall"]
            kind = self._rng.choice(kinds)
            if kind == "reset" and conditional and self.commit_resets == "as_503":
                kind = "slowdown"
                self.faults["commit_reset_as_503"] += 1
            self.faults[kind] += 1
            return kind

    def count(self, what: str) -> None:
        with self._lock:
            self.faults[what] += 1


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as SDK clients expect

    def log_message(self, format, *args):  # noqa: A002 - quiet: the counts are the log
        pass

    def do_GET(self):
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _proxy(self) -> None:
        import os as _os, sys as _sys
        t0 = time.time()
        try:
            self._proxy2()
        finally:
            if _os.environ.get("S3PROXY_DEBUG") and time.time() - t0 > 5:
                print(f"SLOW {time.time()-t0:.1f}s {self.command} {self.path[:150]} fwd@{getattr(self, '_t_forward', 0)-t0:.1f} done@{getattr(self, '_t_forwarded', 0)-t0:.1f} {dict(self.headers)}", file=_sys.stderr, flush=True)

    def _proxy2(self) -> None:
        body = self._read_body()
        proxy = self.owner
        conditional = self.command == "PUT" and ("If-None-Match" in self.headers or "If-Match" in self.headers)
        kind = proxy.draw(self.headers.get("User-Agent", ""), conditional)
        if kind == "slowdown":
            return self._slowdown()
        if kind == "stall":
            time.sleep(proxy.stall_seconds)
            if self._client_gone():
                proxy.count("stall_client_gave_up")
                self.close_connection = True
                return
        if kind == "reset" and conditional and proxy.commit_resets == "unsent":
            proxy.count("commit_unsent")
            return self._reset(b"")
        self._t_forward = time.time()
        try:
            status, reason, headers, payload = self._forward(body)
            self._t_forwarded = time.time()
        except OSError as exc:  # the endpoint itself failed: not an injected fault
            proxy.errors.append(f"{self.command} {self.path}: {exc!r}")
            return self._reset(b"")
        head = self._head(status, reason, headers, payload)
        if kind != "reset":
            self.wfile.write(head + (b"" if self.command == "HEAD" else payload))
            return
        if conditional:
            proxy.count("commit_lost")  # it landed, and the client will not know
        if self._body_read_outside_retries(status):
            proxy.count("reset_before_response")
            return self._reset(b"")
        proxy.count("reset_mid_body")
        self._reset(head + payload[: len(payload) // 2] if payload else head[: len(head) // 2])

    # -- pieces --------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
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
        payload = b"" if self.command == "HEAD" else self._slowdown_body()
        self.send_response(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _slowdown_body(self) -> bytes:
        resource = self.path.split("?")[0]
        return SLOWDOWN_BODY.format(resource=resource, request_id=f"fault-{id(self):x}").encode()

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
        """A response whose body this client reads after its retry loop has ended (see the module
        docstring): a LIST or an error response, from a client in `headers_only_agents`."""
        agent = self.headers.get("User-Agent", "")
        if not any(a in agent for a in self.owner.headers_only_agents):
            return False
        path, _, query = self.path.partition("?")
        is_list = self.command == "GET" and ("list-type" in query or "/" not in path.strip("/"))
        return is_list or status >= 300

    def _client_gone(self) -> bool:
        """True when the client closed its end while we stalled (it timed out and will retry)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
