"""flows/console.py: user errors lose their traceback on Prefect's handlers (and leave the console), other
errors keep theirs; third-party warnings stay out; MLflow's quieting waits for its import; the progress
view turns task reports into bars; tasks/progress.py never lets a listener fail a task."""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys
import warnings

import pytest

from flows import console
from loopline.errors import ContractError, LooplineError, ModelError
from tasks import progress as task_progress


class Capture(logging.Handler):
    """Stands in for Prefect's API handler: not a stream handler, keeps what it gets."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logs():
    """A logger with an 'API' handler and a 'console' stream handler, both filtered as install() does."""
    logger = logging.getLogger("test.console.task_runs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    api, stream = Capture(), io.StringIO()
    term = logging.StreamHandler(stream)
    term.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers = [api, term]
    console.add_user_error_filters(logger.handlers)
    console.add_user_error_filters(logger.handlers)  # idempotent
    yield logger, api, stream
    logger.handlers = []


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_one_filter_per_handler_drop_on_the_console_only(logs):
    logger, api, _ = logs
    term = logger.handlers[1]
    assert [f.drop for f in api.filters if isinstance(f, console.UserErrorFilter)] == [False]
    assert [f.drop for f in term.filters if isinstance(f, console.UserErrorFilter)] == [True]


def test_a_workers_flow_run_keeps_the_line_and_the_cli_then_drops_it():
    """A flow run a worker starts strips the traceback and keeps the console line (the worker's log); the CLI,
    whether it filters before or after a flow module is imported, drops it from the console."""
    api, term = Capture(), logging.StreamHandler(io.StringIO())
    console.add_user_error_filters([api, term], drop_on_console=False)  # strip_user_error_tracebacks
    assert [f.drop for h in (api, term) for f in h.filters] == [False, False]
    console.add_user_error_filters([api, term])  # the CLI's install(), after the flow module's import
    assert [f.drop for h in (api, term) for f in h.filters] == [False, True]
    console.add_user_error_filters([api, term], drop_on_console=False)  # a flow module imported after it
    assert [f.drop for h in (api, term) for f in h.filters] == [False, True]


def test_a_user_error_leaves_the_console_and_reaches_the_api_without_traceback(logs):
    logger, api, stream = logs
    try:
        try:
            raise ContractError("column 'x' has no type", file="c.yaml", key="x")
        except ContractError as inner:
            raise RuntimeError("wrapped") from inner  # a cause in the chain counts
    except RuntimeError as exc:
        logger.exception("Encountered exception during execution: %r", exc)
    logger.error(
        "Finished in state Failed(\"Task run encountered an exception ModelError: model 'm' unknown\")"
    )
    assert stream.getvalue() == ""
    assert [r.exc_info for r in api.records] == [None, None]
    assert "Encountered exception" in api.records[0].getMessage()


def test_other_errors_keep_their_traceback_everywhere(logs):
    logger, api, stream = logs
    try:
        raise ValueError("a bug")
    except ValueError:
        logger.exception("Encountered exception during execution")
    logger.error('Finished in state Failed("Task run encountered an exception ValueError: a bug")')
    out = stream.getvalue()
    assert "Traceback" in out and "ValueError: a bug" in out and "Finished in state Failed" in out
    assert api.records[0].exc_info is not None


def test_a_lost_prefect_api_is_reported_by_the_cli_not_as_a_traceback(logs):
    """A Prefect server restarted mid-run: the connection error is the CLI's to explain (flows/cli.py)."""
    import httpx

    logger, api, stream = logs
    try:
        try:
            raise httpx.ConnectError("All connection attempts failed")
        except httpx.ConnectError as inner:
            raise RuntimeError("create_task_run failed") from inner
    except RuntimeError:
        logger.exception("Encountered exception during execution")
    assert stream.getvalue() == ""
    assert api.records[0].exc_info is None


def test_the_cli_says_what_to_do_when_the_prefect_api_stops_answering(monkeypatch, capsys):
    import httpx
    import typer

    from flows.cli import _fail

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(typer.Exit) as exit_:
        try:
            raise httpx.ConnectError("All connection attempts failed")
        except httpx.ConnectError as exc:
            _fail(exc, as_json=False)
    err = capsys.readouterr().err
    assert exit_.value.exit_code == 1 and "Traceback" not in err
    assert "http://127.0.0.1:9/api stopped answering" in err and "run the same command again" in err


def test_a_record_a_task_marks_as_reported_by_the_cli_stays_in_the_api_only(logs):
    logger, api, stream = logs
    logger.warning("batch b rejected: too many bad rows", extra={"loopline_user_error": True})
    assert stream.getvalue() == "" and len(api.records) == 1


def test_user_error_names_include_subclasses_defined_anywhere(logs):
    class VeryOwnError(LooplineError):
        exit_code = 2

    logger, _, stream = logs
    logger.error("Finished in state Failed('Task run encountered an exception VeryOwnError: no')")
    logger.info("Finished in state Completed()")
    assert stream.getvalue() == "INFO Finished in state Completed()\n"


def test_user_error_walks_cause_and_context_and_survives_cycles():
    inner = raised(ModelError("m"))
    outer = RuntimeError("outer")
    outer.__context__ = inner
    assert console.user_error(outer) is inner
    assert console.user_error(inner) is inner
    loop_a, loop_b = RuntimeError("a"), RuntimeError("b")
    loop_a.__cause__, loop_b.__cause__ = loop_b, loop_a
    assert console.user_error(loop_a) is None
    assert console.user_error(None) is None


def test_install_filters_prefects_own_handlers(monkeypatch):
    monkeypatch.setattr(console, "_state", {"verbose": False, "configured": True})
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # install() sets it: restored after
    console.install()
    console.install()
    handlers = console.prefect_handlers()
    names = {type(h).__name__: h for h in handlers}
    assert {"PrefectConsoleHandler", "APILogHandler"} <= set(names)
    for name, drop in (("PrefectConsoleHandler", True), ("APILogHandler", False)):
        filters = [f for f in names[name].filters if isinstance(f, console.UserErrorFilter)]
        assert [f.drop for f in filters] == [drop]
    for handler in handlers:  # leave the session's logging as it was
        for f in [f for f in handler.filters if isinstance(f, console.UserErrorFilter)]:
            handler.removeFilter(f)


def test_verbose_installs_nothing(monkeypatch):
    monkeypatch.setattr(console, "_state", {"verbose": True, "configured": True})
    before = {id(h): list(h.filters) for h in console.prefect_handlers()}
    console.install()
    assert {id(h): list(h.filters) for h in console.prefect_handlers()} == before


def test_only_our_own_warnings_are_shown(tmp_path):
    shown = []
    show = console._own_warnings_only(lambda *args: shown.append(args[2]))
    own = console.OWN_DIRS[0] + "x.py"
    show("m", UserWarning, own, 1)
    show("m", UserWarning, "/site-packages/mlflow/pyfunc/utils/data_validation.py", 187)
    assert shown == [own]
    keep = console._OwnWarningsFilter()
    record = logging.LogRecord("py.warnings", logging.WARNING, "", 0, f"{own}:1: UserWarning: m", (), None)
    other = logging.LogRecord(
        "py.warnings", logging.WARNING, "", 0, "/x/mlflow/a.py:1: UserWarning", (), None
    )
    assert keep.filter(record) and not keep.filter(other)


def test_after_import_waits_for_the_import_not_for_a_find_spec(tmp_path, monkeypatch):
    (tmp_path / "ll_fake_pkg").mkdir()
    (tmp_path / "ll_fake_pkg" / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    console.after_import("ll_fake_pkg", lambda module: seen.append(module.VALUE))
    assert importlib.util.find_spec("ll_fake_pkg") is not None and seen == []  # asked, not imported
    import ll_fake_pkg  # noqa: F401

    assert seen == [1]
    assert not any(isinstance(f, console._AfterImport) for f in sys.meta_path)
    console.after_import("ll_fake_pkg", lambda module: seen.append(2))  # already imported: at once
    assert seen == [1, 2]
    sys.modules.pop("ll_fake_pkg", None)


def test_mlflow_quieting_survives_mlflows_enable_logging():
    pytest.importorskip("mlflow")
    from mlflow.utils import logging_utils

    original = logging_utils.MLFLOW_LOGGING_STREAM
    level = logging.getLogger("mlflow").level
    try:
        console._quiet_mlflow()
        logging_utils.enable_logging()
        out = io.StringIO()
        real, sys.stderr = sys.stderr, out
        try:
            logging_utils.eprint("Successfully registered model 'm'.")
        finally:
            sys.stderr = real
        assert out.getvalue() == ""
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM = original
        logging.getLogger("mlflow").setLevel(level)


def test_progress_view_feeds_training_and_ingest_bars():
    from rich.console import Console
    from rich.progress import Progress

    bars = Progress(console=Console(file=io.StringIO()))
    view = console._ProgressView(bars)
    view("train", {"model": "m", "step": 20, "total_steps": 50, "loss": 0.5, "samples_per_s": 1234.5})
    view("train", {"model": "m", "step": 50, "total_steps": 50, "done": True})
    view("ingest.files", {"files": 2})
    for name in ("a.csv", "b.csv"):
        view("ingest.batch", {"source": f"/x/{name}", "state": "start"})
        view("ingest.batch", {"source": f"/x/{name}", "state": "done", "rows_in": 10})
    train, ingest = bars.tasks
    assert (train.completed, train.total, train.fields["info"]) == (50, 50, "loss 0.5000 · 1,234 samples/s")
    assert (ingest.completed, ingest.total, ingest.fields["info"]) == (2, 2, "20 rows")
    assert train.finished and ingest.finished


def test_progress_is_off_without_a_terminal_or_with_json(monkeypatch):
    monkeypatch.setattr(console, "_state", {"verbose": False, "configured": True})
    assert not console.progress_wanted(True)
    assert not console.progress_wanted(False)  # pytest captures stdout: not a terminal
    with console.progress(False):
        task_progress.report("train", step=1)  # nobody listens: nothing happens


def test_a_failing_listener_never_reaches_the_task():
    got = []

    def broken(kind, payload):
        raise RuntimeError("bar broke")

    with task_progress.listening(broken), task_progress.listening(lambda k, p: got.append((k, p))):
        task_progress.report("train", step=3)
    task_progress.report("train", step=4)  # after the block: nobody listens
    assert got == [("train", {"step": 3})]


def test_configure_verbose_touches_no_warning_filter(monkeypatch):
    monkeypatch.setattr(console, "_state", {"verbose": False, "configured": False})
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "unset")  # recorded: restored after the test
    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    with warnings.catch_warnings():
        before = list(warnings.filters)
        console.configure(verbose=True)
        assert warnings.filters == before
    assert console.verbose()
    assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "0"


def test_prefects_flush_progress_at_exit_stays_off_the_console_other_warnings_stay():
    """CI saw "EventsWorker - Still processing items: 3 items remaining..." after the CLI's error paragraph
    (Prefect's event sender flushing at exit to a slow API). Through Prefect's own console handler, in a
    fresh process as the CLI configures it: that line is gone, the service's other warnings are not."""
    import subprocess

    code = (
        "import logging\n"
        "from flows import console\n"
        "console.configure()\n"
        "import prefect.main\n"
        "logging.getLogger('EventsWorker').warning('Still processing items: 3 items remaining...')\n"
        "logging.getLogger('APILogWorker').warning('Still processing items: 9 items remaining...')\n"
        "logging.getLogger('EventsWorker').warning('Service queue is full (10 items), dropping item')\n"
    )
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Still processing items" not in res.stderr
    assert "dropping item" in res.stderr
