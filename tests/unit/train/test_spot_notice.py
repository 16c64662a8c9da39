"""Spot notices as the clouds send them, from a real local HTTP server that speaks each metadata protocol:
AWS IMDSv2 (a session token first; 404 = no notice, 200 with an action = notice) and GCP (the
Metadata-Flavor header; TRUE / FALSE). A failed token request or an error answer is never a notice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopline.train.preemption import PreemptionWatch

AWS_NOTICE = "/latest/meta-data/spot/instance-action"
GCP_NOTICE = "/computeMetadata/v1/instance/preempted"


class Metadata:
    """What the fake instance's metadata service holds; the handler reads it on every request."""

    def __init__(self) -> None:
        self.aws_action: dict | None = None  # None: 404, as on EC2 when no interruption is scheduled
        self.token_status = 200  # the PUT /latest/api/token answer
        self.preempted = False  # GCP
        self.require_flavor = True  # GCP refuses requests without Metadata-Flavor: Google (403)
        self.tokens: set[str] = set()
        self.log: list[tuple[str, str]] = []


def _handler(md: Metadata):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            md.log.append(("PUT", self.path))
            if self.path != "/latest/api/token" or md.token_status != 200:
                return self._send(md.token_status if md.token_status != 200 else 404)
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(400)
            token = f"token-{len(md.tokens)}"
            md.tokens.add(token)
            self._send(200, token.encode())

        def do_GET(self):
            md.log.append(("GET", self.path))
            if self.path == AWS_NOTICE:
                if self.headers.get("X-aws-ec2-metadata-token") not in md.tokens:
                    return self._send(401)  # IMDSv2 required, as on current instances
                if md.aws_action is None:
                    return self._send(404)
                return self._send(200, json.dumps(md.aws_action).encode(), Content_Type="text/plain")
            if self.path == GCP_NOTICE:
                if md.require_flavor and self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403)
                body = b"TRUE" if md.preempted else b"FALSE"
                return self._send(200, body, Metadata_Flavor="Google", Content_Type="application/text")
            self._send(404)

        def log_message(self, *args):  # keep test output clean
            pass

    return Handler


@contextmanager
def metadata_server() -> Iterator[tuple[str, Metadata]]:
    md = Metadata()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(md))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", md
    finally:
        server.shutdown()
        server.server_close()


def poller(url: str):
    """One watch's poll (what the watch's thread calls every spot_poll_seconds), without starting it."""
    return PreemptionWatch(spot_notice_url=url, handle_sigterm=False).check_spot_notice


def test_protocols_follow_the_url():
    from loopline.train.preemption import spot_protocol

    assert spot_protocol("http://169.254.169.254" + AWS_NOTICE) == "aws"
    assert spot_protocol("http://metadata.google.internal" + GCP_NOTICE) == "gcp"
    assert spot_protocol("http://metadata.google.internal/other") == "gcp"
    assert spot_protocol("http://127.0.0.1:9/notice") == "http"


def test_aws_imdsv2_token_then_notice():
    with metadata_server() as (base, md):
        check = poller(base + AWS_NOTICE)
        assert check() is None  # 404: nothing scheduled
        md.aws_action = {"action": "terminate", "time": "2026-11-23T10:00:00Z"}
        notice = check()
        assert notice and "terminate" in notice and "2026-11-23T10:00:00Z" in notice
        # the token is fetched once and reused between polls
        assert [p for m, p in md.log if m == "PUT"] == ["/latest/api/token"]
        md.aws_action = {"time": "2026-11-23T10:00:00Z"}  # a 200 without an action is no notice
        assert check() is None


def test_aws_token_failure_is_not_a_notice_and_a_revoked_token_is_renewed():
    with metadata_server() as (base, md):
        md.aws_action = {"action": "stop", "time": "2026-11-23T10:00:00Z"}
        md.token_status = 403
        check = poller(base + AWS_NOTICE)
        assert check() is None and check() is None
        assert ("GET", AWS_NOTICE) not in md.log  # no token, no notice request
        md.token_status = 200
        assert "stop" in (check() or "")
        md.tokens.clear()  # the service forgot the token: 401, not a notice; the next poll gets a new one
        assert check() is None
        assert "stop" in (check() or "")


def test_gcp_flavor_header_and_true_false():
    with metadata_server() as (base, md):
        check = poller(base + GCP_NOTICE)
        assert check() is None  # FALSE
        md.require_flavor = False
        assert check() is None  # FALSE without the header check too: a 200 alone is no notice
        md.require_flavor, md.preempted = True, True
        assert check() == f"spot notice at {base + GCP_NOTICE}: preempted"


def test_unreachable_endpoint_is_not_a_notice():
    with metadata_server() as (base, _):
        pass  # the server is gone: its port refuses
    for path in (AWS_NOTICE, GCP_NOTICE, "/notice"):
        assert poller(base + path)() is None


def test_the_watch_stops_training_when_the_notice_appears():
    with metadata_server() as (base, md):
        with PreemptionWatch(spot_notice_url=base + AWS_NOTICE, handle_sigterm=False, poll_seconds=0.05) as w:
            time.sleep(0.2)
            assert w.requested is None
            md.aws_action = {"action": "terminate", "time": "2026-11-23T10:00:00Z"}
            deadline = time.monotonic() + 5
            while w.requested is None and time.monotonic() < deadline:
                time.sleep(0.02)
        assert w.requested and "terminate" in w.requested
