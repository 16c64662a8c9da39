"""What a CLI command shows while it runs: quiet by default, everything with `loopline --verbose`.

Quiet means:
- a user error (a LooplineError: bad contract, source, data, config, unknown dataset or model) is the
  CLI's to report, in one paragraph with its exit code. Prefect's own records of it ("Task run ... Finished
  in state Failed(...)", "Flow run ... Encountered exception during execution" plus its traceback) are
  dropped from the console, and reach the Prefect API without the traceback (the UI still says why);
- third-party libraries speak only at ERROR (MLflow, Great Expectations, torch), their warnings are not
  shown, MLflow's registration chatter ("Successfully registered model ...") and artifact progress bars
  are off;
- long steps show a progress bar (training: steps, loss, samples/s; ingest: files, rows) on a terminal.

`configure()` runs once per command (the Typer callback), before anything heavy is imported; `install()`
in the commands that run flows, after their Prefect settings are in the environment: it imports Prefect
(which configures its logging then) and filters Prefect's handlers. Nothing here imports Prefect, MLflow
or rich at module level: `loopline --help` stays fast. Only the CLI is quieted; a flow run a worker starts
gets `strip_user_error_tracebacks` (from every flow module's import of flows.heartbeats): the same lines,
with no traceback for a user error.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Loggers of libraries whose INFO/WARNING lines are noise on a command line (MLflow's own is set after its
# import: it configures itself then). `--verbose` leaves them alone.
THIRD_PARTY_LOGGERS = ("mlflow", "great_expectations", "torch", "alembic", "urllib3", "botocore", "numexpr")
# Our code: its warnings stay visible when the third parties' are ignored.
OWN_MODULES = r"(loopline|tasks|flows|blocks)(\.|$)"
# Prefect loggers whose handlers get the user-error filter (the console handler sits on the root logger).
PREFECT_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.extra")
# Prefect's state messages name the exception type: "Task run encountered an exception ModelError: ..."
# A record with this attribute set (a task's `extra=`, see tasks/ingest.py) is one the CLI reports itself.
USER_ERROR_MARK = "loopline_user_error"
# Prefect's background senders log under their class names. At exit they flush what is queued and say
# "Still processing items: N items remaining..." when the API is slow: chatter after the CLI's last word.
PREFECT_QUEUE_LOGGERS = ("EventsWorker", "APILogWorker")
_STATE_EXCEPTION = re.compile(r"encountered an exception:?\s+([A-Za-z_]\w*)(?::|\()")

_state: dict[str, Any] = {"verbose": False, "configured": False}


def verbose() -> bool:
    return bool(_state["verbose"])


def configure(*, verbose: bool = False) -> None:
    """Once per command, before heavy imports. Quiet (the default) or verbose (`--verbose`)."""
    _state["verbose"] = verbose
    if _state["configured"]:
        return
    _state["configured"] = True
    if verbose:
        os.environ.setdefault(
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "0"
        )  # every record, as Prefect's default
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=OWN_MODULES)
    warnings.showwarning = _own_warnings_only(warnings.showwarning)  # also past a library's "once" filter
    logging.getLogger("py.warnings").addFilter(_OwnWarningsFilter())
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in PREFECT_QUEUE_LOGGERS:
        logging.getLogger(name).addFilter(_drain_progress)
    after_import("mlflow", _quiet_mlflow)


def install() -> None:
    """After `import prefect`, in the commands that run flows: the user-error filter on Prefect's
    handlers, MLflow's artifact progress bars off. Idempotent; nothing with `--verbose`."""
    if verbose():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import prefect.main  # noqa: F401  (configures Prefect's logging: its handlers exist from here on)

    add_user_error_filters(prefect_handlers())


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("loopline", "tasks", "flows", "blocks"))


def _own_warnings_only(show: Callable[..., None]) -> Callable[..., None]:
    """`warnings.showwarning` for our files only (MLflow re-enables its UserWarnings inside some calls)."""

    def show_own(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(OWN_DIRS):
            show(message, category, filename, lineno, file, line)

    return show_own


def _drain_progress(record: logging.LogRecord) -> bool:
    """Off the console in quiet mode: the flush-progress line of Prefect's queue services at exit (the
    items are still delivered; a real failure of the service is logged on another logger, at ERROR)."""
    return not str(record.msg).startswith("Still processing items")


class _OwnWarningsFilter(logging.Filter):
    """On `py.warnings` (Great Expectations turns warnings into log records): our files' warnings only."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.args[0] if isinstance(record.args, tuple) and record.args else record.msg
        return str(text).startswith(OWN_DIRS)


# -- user errors in Prefect's logs ------------------------------------------------------------------------


def user_error(exc: BaseException | None) -> BaseException | None:
    """The LooplineError `exc` is, or that caused it (its __cause__ / __context__ chain); else None."""
    from loopline.errors import LooplineError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LooplineError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def api_outage(exc: BaseException | None) -> BaseException | None:
    """The connection error (httpx's TransportError: refused, reset, timed out) `exc` is or that caused it,
    when the Prefect API stopped answering mid-command (a server restart, a network blip); else None.
    It is not the user's fault and not a bug here: the CLI says so in one paragraph, without a traceback."""
    import httpx

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, httpx.TransportError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _user_error_names() -> set[str]:
    from loopline.errors import LooplineError

    names, todo = set(), [LooplineError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def is_user_error_record(record: logging.LogRecord) -> bool:
    """A record about a user error: it carries one (exc_info), or it is Prefect's state line naming one
    ("Finished in state Failed('Task run encountered an exception ContractError: ...')")."""
    if record.exc_info and record.exc_info[1] is not None:
        return user_error(record.exc_info[1]) is not None or api_outage(record.exc_info[1]) is not None
    if record.levelno < logging.WARNING:
        return False
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is not ours to judge
        return False
    match = _STATE_EXCEPTION.search(message)
    return bool(match) and match.group(1) in _user_error_names()


class UserErrorFilter(logging.Filter):
    """On a handler of Prefect's: records about a user error lose their traceback; a console handler
    (`drop`) shows none of them, since the CLI prints the error itself."""

    def __init__(self, drop: bool):
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, USER_ERROR_MARK, False):
            if not is_user_error_record(record):
                return True
            setattr(record, USER_ERROR_MARK, True)  # the next handler of the same record need not look again
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return not self.drop


def prefect_handlers() -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    for name in PREFECT_LOGGERS:
        for handler in logging.getLogger(name or None).handlers:
            if handler not in handlers:
                handlers.append(handler)
    return handlers


def add_user_error_filters(handlers: list[logging.Handler], *, drop_on_console: bool = True) -> None:
    """Stream handlers (the console) drop user-error records (`drop_on_console`, the CLI's: it prints the
    error itself); others (the Prefect API) keep them without the traceback. A handler with the filter
    already keeps it, made to drop on the console when `drop_on_console`."""
    for handler in handlers:
        drop = drop_on_console and isinstance(handler, logging.StreamHandler)
        found = [f for f in handler.filters if isinstance(f, UserErrorFilter)]
        if not found:
            handler.addFilter(UserErrorFilter(drop=drop))
        elif drop_on_console:
            found[0].drop = drop


def strip_user_error_tracebacks() -> None:
    """In every process that runs our flows (a worker's flow run as much as a CLI command): Prefect's records
    of a user error keep their line and lose the traceback, in the run's logs in the UI and on its console
    (the CLI then drops the console lines: `install`). Idempotent; nothing with `--verbose`."""
    if verbose():
        return
    import prefect.main  # noqa: F401  (configures Prefect's logging: its handlers exist from here on)

    add_user_error_filters(prefect_handlers(), drop_on_console=False)


# -- third parties -----------------------------------------------------------------------------------------


def _quiet_mlflow(_module: Any = None) -> None:
    """MLflow at ERROR; its eprint() chatter ("Successfully registered model", "Created version") off.
    MLflow's logger keeps its own stream, so its errors still show."""
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        from mlflow.utils import logging_utils

        class Silent(logging_utils.MlflowLoggingStream):
            """Writes nothing, and stays so: MLflow calls enable_logging() after its own quiet spells."""

            enabled = property(lambda self: False, lambda self, value: None)

            def write(self, text):
                pass

            def flush(self):
                pass

        logging_utils.MLFLOW_LOGGING_STREAM = Silent()  # what eprint() writes to, read at each call
    except Exception:  # another MLflow layout: its chatter shows, nothing breaks
        pass


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` right after `name` is first imported: MLflow configures its logging on
    import, and importing it up front would cost every command 1.5 s. (A `find_spec` that only asks
    whether the package is installed gets a spec too; only an import runs the callback.)"""

    def __init__(self, name: str, callback: Callable[[Any], None]):
        self.name = name
        self.callback = callback
        self.done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self.done:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_callback(module):
            exec_module(module)
            if self.done:
                return
            self.done = True
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                self.callback(module)
            except Exception:  # quieting must never break the import
                pass

        loader.exec_module = exec_then_callback  # this spec's own loader instance
        return spec


def after_import(name: str, callback: Callable[[Any], None]) -> None:
    """`callback(module)` now if `name` is imported, else right after its first import."""
    if name in sys.modules:
        callback(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


# -- progress ----------------------------------------------------------------------------------------------


def progress_wanted(as_json: bool) -> bool:
    """Progress bars on a terminal only: not with --json, --verbose, or output to a pipe or file."""
    return not as_json and not verbose() and sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """Progress bars on stderr for what the tasks in this process report (tasks/progress.py) while the
    block runs; nothing when not `enabled`."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from tasks.progress import listening

    bars = Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    view = _ProgressView(bars)
    with bars, listening(view):
        yield


class _ProgressView:
    """Turns tasks' progress reports into rich progress bars: one per training, one per ingest."""

    def __init__(self, bars: Any):
        self.bars = bars
        self.train: dict[str, Any] = {}
        self.ingest: Any = None
        self.files_done = 0
        self.rows = 0

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "train":
            self._train(payload)
        elif kind == "ingest.files":
            self._ingest_task(total=max(1, int(payload.get("files") or 1)))
        elif kind == "ingest.batch":
            self._batch(payload)

    def _train(self, p: dict[str, Any]) -> None:
        model = str(p.get("model") or "model")
        total, step = int(p.get("total_steps") or 0) or None, int(p.get("step") or 0)
        info = []
        if p.get("loss") is not None:
            info.append(f"loss {float(p['loss']):.4f}")
        if p.get("samples_per_s") is not None:
            info.append(f"{float(p['samples_per_s']):,.0f} samples/s")
        if model not in self.train:
            self.train[model] = self.bars.add_task(f"train {model}", total=total, info="")
        task = self.train[model]
        fields = {"info": " · ".join(info)} if info else {}
        self.bars.update(task, completed=step, total=total, **fields)
        if p.get("done"):
            self.bars.stop_task(task)

    def _ingest_task(self, total: int | None = None) -> Any:
        if self.ingest is None:
            self.ingest = self.bars.add_task("ingest", total=total, info="")
        elif total is not None:
            self.bars.update(self.ingest, total=total)
        return self.ingest

    def _batch(self, p: dict[str, Any]) -> None:
        task = self._ingest_task()
        name = os.path.basename(str(p.get("source") or "").rstrip("/")) or "source"
        if p.get("state") == "start":
            self.bars.update(task, description=f"ingest {name}")
            return
        self.files_done += 1
        self.rows += int(p.get("rows_in") or 0)
        self.bars.update(task, completed=self.files_done, info=f"{self.rows:,} rows")
        total = next(t.total for t in self.bars.tasks if t.id == task)
        if total is not None and self.files_done >= total:
            self.bars.update(task, description="ingest")
            self.bars.stop_task(task)
