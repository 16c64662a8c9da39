"""Preemption: SIGTERM and spot notices turn into "checkpoint now, then stop, resumable".

Prefect cancellation, a Kubernetes eviction and a cloud spot reclaim all give the process a short
grace period (Prefect: 30 s between SIGTERM and SIGKILL). The signal handler and the spot watcher only
set a flag; the training loop checks it between steps, writes a checkpoint and raises `Preempted`.
Nothing heavy runs inside a signal handler.

`training.spot_notice_url` speaks the protocol its URL belongs to (`SpotNoticeProbe`):
- AWS (a path under `/latest/meta-data/`, e.g. http://169.254.169.254/latest/meta-data/spot/instance-action):
  IMDSv2, a session token from `PUT /latest/api/token` sent as `X-aws-ec2-metadata-token`; 404 means no
  notice, 200 with an `action` ("terminate", "stop", "hibernate") is one.
- GCP (a path under `/computeMetadata/`, e.g.
  http://metadata.google.internal/computeMetadata/v1/instance/preempted): the `Metadata-Flavor: Google`
  header; the body `TRUE` is a notice, `FALSE` is none.
- any other URL: a 200 with a body other than FALSE / NONE / 0 is a notice.
A failed token request, an error answer or an unreachable endpoint is never a notice: training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from types import FrameType
from urllib.parse import urlparse

from loopline.errors import LooplineError

log = logging.getLogger(__name__)

# Exit status of a process that stopped on SIGTERM (128 + 15): what shells, torchrun and Kubernetes expect.
PREEMPTED_EXIT_CODE = 143

# Set once this process receives SIGTERM: the process is going away, so an in-process retry is pointless.
_terminating = threading.Event()


class Preempted(LooplineError):
    """Training stopped early on SIGTERM or a spot notice after writing a checkpoint; rerun to resume."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, message: str, *, step: int, checkpoint_uri: str | None, reason: str):
        super().__init__(message)
        self.step = step
        self.checkpoint_uri = checkpoint_uri
        self.reason = reason


AWS_TOKEN_PATH = "/latest/api/token"
AWS_TOKEN_TTL_SECONDS = 21600  # the longest IMDSv2 allows; renewed a minute before it runs out
FALSE_BODIES = frozenset({b"", b"FALSE", b"NONE", b"0"})


def spot_protocol(url: str) -> str:
    """ "aws", "gcp" or "http" (a plain endpoint), from the URL's path and host."""
    parsed = urlparse(url)
    if parsed.path.startswith("/latest/meta-data/"):
        return "aws"
    if parsed.path.startswith("/computeMetadata/") or parsed.hostname == "metadata.google.internal":
        return "gcp"
    return "http"


class SpotNoticeProbe:
    """One spot-notice endpoint, asked in its own protocol (module docstring). `check()` returns the
    notice as text, or None; it never raises. Keeps the AWS session token between polls."""

    def __init__(self, url: str, timeout_s: float = 2.0):
        self.url = url
        self.protocol = spot_protocol(url)
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._warned: set[str] = set()

    def check(self) -> str | None:
        try:
            if self.protocol == "aws":
                return self._check_aws()
            if self.protocol == "gcp":
                return self._check_gcp()
            return self._check_plain()
        except (urllib.error.URLError, OSError, ValueError) as exc:  # incl. HTTPError: not a notice
            self._warn_once(f"spot notice check at {self.url} failed ({exc}); not a notice, training goes on")
            return None

    def _get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body); (404, b"") for a 404, other HTTP errors raise."""
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310 - configured URL
                return resp.status, resp.read(4096)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return 404, b""
            raise

    def _check_aws(self) -> str | None:
        token = self._aws_token()
        if token is None:
            return None
        try:
            status, body = self._get(self.url, {"X-aws-ec2-metadata-token": token})
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # the token expired or was revoked: get a new one next poll
                self._token = None
            raise
        if status != 200:
            return None  # 404: no interruption scheduled
        notice = json.loads(body.decode() or "{}")
        action = notice.get("action") if isinstance(notice, dict) else None
        if not action:
            return None
        return f"spot notice at {self.url}: action {action} at {notice.get('time', 'unknown time')}"

    def _aws_token(self) -> str | None:
        """The IMDSv2 session token (PUT /latest/api/token). None when it cannot be had: no notice then."""
        if self._token is not None and time.monotonic() < self._token_renew_at:
            return self._token
        parsed = urlparse(self.url)
        request = urllib.request.Request(
            f"{parsed.scheme}://{parsed.netloc}{AWS_TOKEN_PATH}",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_SECONDS)},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310 - configured URL
                token = resp.read(4096).decode().strip()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._warn_once(
                f"no IMDSv2 token from {request.full_url} ({exc}); not a notice, training goes on"
            )
            return None
        if not token:
            return None
        self._token, self._token_renew_at = token, time.monotonic() + AWS_TOKEN_TTL_SECONDS - 60
        return token

    def _check_gcp(self) -> str | None:
        status, body = self._get(self.url, {"Metadata-Flavor": "Google"})
        if status == 200 and body.strip().upper() == b"TRUE":
            return f"spot notice at {self.url}: preempted"
        return None  # FALSE: not preempted

    def _check_plain(self) -> str | None:
        status, body = self._get(self.url, {})
        if status == 200 and body.strip().upper() not in FALSE_BODIES:
            return f"spot notice at {self.url}: {body[:200].decode(errors='replace')}"
        return None

    def _warn_once(self, message: str) -> None:
        """A metadata endpoint that fails fails every poll: say it once, not every few seconds."""
        key = message.split(" (")[0]
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def process_is_terminating() -> bool:
    """True once this process received SIGTERM (a retry here would be killed anyway)."""
    return _terminating.is_set()


class PreemptionWatch:
    """Context manager: a SIGTERM handler plus an optional spot-notice poller, feeding one flag.

    `requested` is None until preemption is asked for, then says why ("SIGTERM", "spot notice: ...").
    The SIGTERM handler is installed only from the main thread (Python allows no other); elsewhere the
    watch still polls the spot notice.
    """

    def __init__(
        self,
        *,
        spot_notice_url: str | None = None,
        spot_notice_file: str | None = None,
        poll_seconds: float = 5.0,
        handle_sigterm: bool = True,
    ):
        self.spot_notice_url = spot_notice_url
        self._probe = SpotNoticeProbe(spot_notice_url) if spot_notice_url else None
        self.spot_notice_file = spot_notice_file
        self.poll_seconds = poll_seconds
        self.handle_sigterm = handle_sigterm
        self.requested: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler = None
        self._installed = False
        self._got_sigterm = False

    def request(self, reason: str) -> None:
        if self.requested is None:
            self.requested = reason
            log.warning("preemption requested (%s): checkpointing and stopping", reason)

    def check_spot_notice(self) -> str | None:
        """One poll. A file that exists, or the URL's notice in its protocol (module docstring)."""
        if self.spot_notice_file and os.path.exists(self.spot_notice_file):
            return f"spot notice file {self.spot_notice_file}"
        if self._probe is not None:
            return self._probe.check()
        return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            notice = self.check_spot_notice()
            if notice:
                self.request(notice)
                return
            self._stop.wait(self.poll_seconds)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        _terminating.set()
        self._got_sigterm = True
        self.request("SIGTERM")

    def __enter__(self) -> PreemptionWatch:
        if _terminating.is_set():
            self.request("SIGTERM (received before this attempt)")
        if self.handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        elif self.handle_sigterm:
            log.debug("not on the main thread: SIGTERM is left to the host process")
        if self.spot_notice_url or self.spot_notice_file:
            notice = self.check_spot_notice()  # a notice already up: stop before the first step
            if notice:
                self.request(notice)
            else:
                self._thread = threading.Thread(target=self._poll, name="loopline-spot-watch", daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._installed:
            previous = self._previous_handler
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self._installed = False
            if self._got_sigterm and callable(previous):
                # A host that handles SIGTERM itself (Prefect's flow engine turns it into a cancellation
                # or a crash) gets the signal it was owed, now that the checkpoint is written.
                os.kill(os.getpid(), signal.SIGTERM)
