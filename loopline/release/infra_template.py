"""A warm, isolated process for infra validation: imports paid once, a fresh fork for every validation.

A fresh Python process per validation paid ~20 s here importing mlflow and torch, on every promotion.
Reusing one process across validations would be fast but not isolated: a model that crashes or hangs it, or a
factory module whose import patches numpy or torch, would reach the next validation. So the reused process is
a *template* that never loads a model. It imports the serving stack once (numpy, pandas, torch,
loopline.serving; never mlflow, never a model's factory module) and then, per request, `fork()`s a child
that starts from that clean state, loads and scores one model, writes its report to a file and exits.
Whatever the child did (imports, global state, a crash, memory) dies with it; the template only waits for it.

    caller (promote)                       template (python -m loopline.release.infra_template)
    Template.validate(request, timeout) -> one JSON line on its stdin
                                           fork -> child: env + cwd of the request, stdout/stderr to a file
                                                   in the request's workdir, SIGALRM as a last resort,
                                                   loopline.release.infra_validation.run_child(request)
                                                   -> report.json, os._exit
                                           waitpid -> one JSON line {"exit": code}
    reads the line (select, deadline)   <- a timeout kills the template's whole process group (child
                                           included); the next validation starts a new template.

Isolation, concretely: a crash or `os._exit` in the child is an exit code, reported with the tail of the
child's output; a hang is a timeout that kills the process group; a model's imports and side effects never
reach the template; the child gets the caller's environment as it is *at that validation* (so
LOOPLINE_MODEL_MODULES and tracking settings are current); the template dies with its caller (EOF on stdin).
What a fork does not isolate: the template's own code version (it imported loopline when it started; the
caller runs that same installed copy) and the machine (a child can still fill the disk or the memory).

The template is started (in the background) by `prestart()` at the top of a promotion, so its imports
overlap the loader gate and the test-set read. One template per caller process and Python executable.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

# what every validation needs, imported once in the template; mlflow is deliberately not here
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "torch",
    "loopline.config",
    "loopline.features",
    "loopline.packaging.bundle",
    "loopline.serving.model",
    "loopline.serving.protocol",
    "loopline.release.infra_validation",
)
ALARM_GRACE_S = 30  # the child's own SIGALRM fires this long after the caller's deadline (orphan safety)


class TemplateError(Exception):
    """The template died or did not answer in time; the message says which."""


class Template:
    """The caller's handle on one template process. Thread-safe: validations run one at a time."""

    def __init__(self, python: str):
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.log = None  # the template's own stderr (import errors), an anonymous temp file
        self.buffer = b""
        self.ready: dict[str, Any] | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        """Start the template unless it runs; returns at once (its imports go on in the background)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [self.python, "-m", "loopline.release.infra_template"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills it and its child together
        )
        self.buffer, self.ready = b"", None

    def validate(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request, wait for the child's exit. Returns {"exit": code, "template_wait_s": s};
        raises TemplateError when the template dies or the deadline passes (the template is then killed)."""
        with self.lock:
            deadline = time.monotonic() + timeout_s
            self.start()
            waited = time.monotonic()
            if self.ready is None:
                self.ready = self._read_line(deadline, "starting")
            waited = time.monotonic() - waited
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
            except OSError as exc:
                self.kill()
                raise TemplateError(f"the validation template is gone: {exc}") from exc
            reply = self._read_line(deadline, "validating")
            return {**reply, "template_wait_s": round(waited, 3)}

    def _read_line(self, deadline: float, doing: str) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TemplateError(f"timed out while {doing}")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                tail = self._log_tail()
                self.kill()
                raise TemplateError(f"the validation template exited while {doing}: {tail}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            self.log.seek(0)
            return self.log.read().decode(errors="replace").strip()[-chars:]
        except (OSError, ValueError, AttributeError):
            return ""

    def kill(self) -> None:
        """Kill the template and any child it has (one process group) and forget it."""
        proc, self.proc, self.ready, self.buffer = self.proc, None, None, b""
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """End the template politely (EOF on its stdin); kill it if it lingers."""
        proc = self.proc
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
            self.proc = None
            proc.stdout.close()  # else a ResourceWarning at exit, in front of every promoting command's user
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


_templates: dict[str, Template] = {}
_templates_lock = threading.Lock()


def template_for(python: str | None = None) -> Template:
    """The process-wide template for this Python executable (created, not started)."""
    python = python or sys.executable
    with _templates_lock:
        if python not in _templates:
            _templates[python] = Template(python)
        return _templates[python]


def prestart(python: str | None = None) -> None:
    """Start the template now so that its imports overlap the caller's own work. Never raises."""
    try:
        template = template_for(python)
        with template.lock:
            template.start()
    except OSError:
        pass  # validate() will start it and report the failure


@atexit.register
def _close_all() -> None:
    for template in list(_templates.values()):
        template.close()


# -- the template process -----------------------------------------------------------------------------


def serve() -> int:
    """The template's loop: preload, say ready, then fork one child per request line until EOF."""
    import importlib

    started = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    # Move everything imported so far out of the collector's reach, for every child: a child's first full
    # collection would otherwise walk (and so copy-on-write) the whole torch + pandas heap, ~0.13 s of the
    # ~0.14 s a 69-row validation took to score. Frozen objects are still freed at exit; the child collects
    # its own garbage as usual.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when this process ends
    out = sys.stdout.buffer
    ready = {
        "ready": True,
        "preload_s": round(time.perf_counter() - started, 3),
        "frozen_objects": gc.get_freeze_count(),
    }
    out.write(json.dumps(ready).encode())
    out.write(b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)  # never returns
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.write(json.dumps({"exit": code, "pid": pid}).encode() + b"\n")
        out.flush()
    return 0


def _child(request: dict[str, Any]) -> None:
    """In the forked child: the request's environment and cwd, output to a file, run, exit."""
    code = 70
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.alarm(int(request["timeout_s"]) + ALARM_GRACE_S)  # default action: the child dies
        workdir = request["workdir"]
        stdin = os.open(os.devnull, os.O_RDONLY)  # the template's stdin carries the next requests
        os.dup2(stdin, 0)
        os.close(stdin)
        fd = os.open(os.path.join(workdir, "child.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("nice"):  # a validation overlapping the caller's evaluation yields the CPU to it
            os.nice(int(request["nice"]))
        cwd = request.get("cwd")
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
            if sys.path and os.path.isdir(sys.path[0] or "."):
                sys.path[0] = cwd  # `python -m` put the template's cwd there; imports follow the caller's
        from loopline.release.infra_validation import run_child

        code = run_child(request)
    except BaseException:  # the report file (or its absence) tells the caller; the traceback goes to the log
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(serve())
