"""Preemption: SIGTERM and spot notices turn into "checkpoint now, then stop, resumable".

Prefect cancellation, a Kubernetes eviction and a cloud spot reclaim all give the process a short
grace period (Prefect: 30 s between SIGTERM and SIGKILL). The signal handler and the spot watcher only
set a flag; the training loop checks it between steps, writes a checkpoint and raises `Preempted`.
Nothing heavy runs inside a signal handler.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from types import FrameType

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
        """One poll. A file that exists, or a URL answering 200 with a body, is a notice (as on EC2)."""
        if self.spot_notice_file and os.path.exists(self.spot_notice_file):
            return f"spot notice file {self.spot_notice_file}"
        if self.spot_notice_url:
            try:
                with urllib.request.urlopen(self.spot_notice_url, timeout=2) as resp:  # noqa: S310 - configured URL
                    body = resp.read(4096)
                    if resp.status == 200 and body.strip():
                        return f"spot notice at {self.spot_notice_url}: {body[:200].decode(errors='replace')}"
            except (urllib.error.URLError, OSError, ValueError):
                pass  # 404 (no notice yet), unreachable metadata endpoint: keep training
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
