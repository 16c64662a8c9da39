"""`loopline serve`: wire the registry, the model manager, the inference log and the ASGI app, and run
uvicorn (httptools + uvloop when installed) until SIGTERM/SIGINT.

A graceful stop (SIGTERM) stops accepting connections, lets in-flight requests finish, drains the
micro-batchers and writes out the inference log before the process exits. The port opens only after the
champion is loaded, so `/ping` answering means ready.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loopline.config import ServingConfig
from loopline.errors import LooplineError, ModelError
from loopline.serving.app import ServingApp
from loopline.serving.backpressure import Backpressure
from loopline.serving.manager import ModelManager, ModelSource
from loopline.serving.metrics import ServingMetrics
from loopline.serving.router import Router

log = logging.getLogger(__name__)


def build_app(
    model: str,
    cfg: ServingConfig,
    *,
    source: ModelSource | None,
    home: str,
    lake=None,
    reload_token: str | None = None,
) -> ServingApp:
    """The ASGI app for model `model` (not started: uvicorn's lifespan, or `await app.startup()`)."""
    _set_torch_threads(cfg.torch_threads)
    metrics = ServingMetrics()
    router = Router(challenger_weight=cfg.challenger_weight, shadow=cfg.shadow)
    # one model thread per role: a model's batches run one after another while the event loop parses the
    # next requests, and a slow challenger never holds up the champion's batches.
    # torch's OpenMP thread count is per calling thread: set it on the model thread itself
    executor, challenger_executor = (
        ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"loopline-{role}",
            initializer=_set_torch_threads,
            initargs=(cfg.torch_threads,),
        )
        for role in ("champion", "challenger")
    )
    holder: dict[str, ServingApp] = {}
    manager = ModelManager(
        model,
        router=router,
        metrics=metrics,
        executor=executor,
        challenger_executor=challenger_executor,
        source=source,
        max_batch_rows=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        device=cfg.device,
        poll_seconds=cfg.poll_seconds,
        pending=lambda: holder["app"].parsing,
        inline_max_rows=cfg.inline_max_rows,
        max_queue_rows=cfg.max_queue_rows,
        on_scored=lambda *scored: holder["app"].log_scored(*scored),
    )

    async def after_load() -> None:
        # the heap after start-up (torch, mlflow, the model) never becomes garbage: keep the cyclic
        # collector from rescanning it on every full collection, which shows up as tail latency
        gc.collect()
        gc.freeze()
        if cfg.inference_log:
            from loopline.serving.inference_log import InferenceLog
            from loopline.storage.lake import Lake

            app.inference_log = InferenceLog(
                lake or Lake.from_env(home),
                model,
                router.champion.model.contract,
                max_queue_rows=cfg.log_queue_rows,
                flush_rows=cfg.log_flush_rows,
                flush_seconds=cfg.log_flush_seconds,
                write_attempts=cfg.log_write_attempts,
                retry_seconds=cfg.log_retry_seconds,
                metrics=metrics,
            )
        if cfg.inference_log and cfg.feedback:  # labels join the log's rows: same lake
            from loopline.serving.feedback import FeedbackQueue
            from loopline.storage.lake import Lake

            app.feedback = FeedbackQueue(
                app.inference_log.lake if app.inference_log is not None else lake or Lake.from_env(home),
                model,
                max_queue_rows=cfg.feedback_queue_rows,
                write_attempts=cfg.feedback_write_attempts,
                retry_seconds=cfg.log_retry_seconds,
                metrics=metrics,
            )

    async def on_shutdown() -> None:
        executor.shutdown(wait=True)
        challenger_executor.shutdown(wait=True)

    app = ServingApp(
        manager=manager,
        router=router,
        metrics=metrics,
        max_body_bytes=cfg.max_body_bytes,
        reload_token=reload_token,
        after_load=after_load,
        on_shutdown=on_shutdown,
        backpressure=Backpressure(
            metrics,
            max_inflight_requests=cfg.max_inflight_requests,
            max_shadow_tasks=cfg.max_shadow_tasks,
            retry_after_seconds=cfg.retry_after_seconds,
        ),
    )
    holder["app"] = app
    return app


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def run_server(model: str, cfg: ServingConfig, *, tracking_uri: str | None, home: str) -> None:
    """Serve `models:/<model>@champion` until stopped (blocking). `tracking_uri` None: MLFLOW_TRACKING_URI or
    sqlite:///<home>/mlflow.db."""
    import uvicorn

    from loopline.packaging.registry import default_tracking_uri
    from loopline.serving.registry_source import RegistrySource
    from loopline.storage.lake import Lake

    uri = tracking_uri or default_tracking_uri(home)
    source = RegistrySource(uri, Path(home) / "serving" / "bundles")
    # the inference log's lake, from the environment (a LOOPLINE_LAKE_BLOCK's is handed over there by the
    # flow layer): resolved before the model loads, so a lake this process must not guess fails at once
    lake = Lake.from_env(home) if cfg.inference_log else None
    app = build_app(model, cfg, source=source, home=home, lake=lake)
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        loop=_best("uvloop", "asyncio"),
        http=_best("httptools", "h11"),
        lifespan="on",
        access_log=False,
        # the app reads no client address: no X-Forwarded-* rewriting middleware on every request
        proxy_headers=False,
        log_level=os.environ.get("LOOPLINE_SERVING_LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=int(cfg.graceful_timeout_seconds),
        backlog=4096,
        # a last resort far above the app's own bounds (backpressure.py): uvicorn's 503 is plain text
        limit_concurrency=cfg.max_connections,
    )
    # a start-up error is raised below, once: not also logged twice by uvicorn on the way out
    quiet = _DropOnceFailed(app)
    logging.getLogger("uvicorn.error").addFilter(quiet)
    server = _listening_server(config, lambda: _announce(app, model, cfg))
    try:
        server.run()
    except SystemExit:  # uvicorn exits 3 when the app's start-up fails: raise what failed instead
        if app.startup_error is None:
            raise
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
    if app.startup_error is not None:
        error = app.startup_error
        raise (
            error
            if isinstance(error, LooplineError)
            else ModelError(f"serving {model!r} failed to start: {error}")
        )


class _DropOnceFailed(logging.Filter):
    """Drops uvicorn's own lines about a start-up that failed (the app's error is raised to the caller)."""

    def __init__(self, app: ServingApp):
        super().__init__()
        self.app = app

    def filter(self, record: logging.LogRecord) -> bool:
        return self.app.startup_error is None


def _announce(app: ServingApp, model: str, cfg: ServingConfig) -> None:
    """One line on stderr once the socket is open: what is served, where, how to call it."""
    import sys

    champion = app.router.champion
    version = f" v{champion.model.version}" if champion is not None else ""
    url = f"http://{cfg.host}:{cfg.port}"
    print(
        f"serving models:/{model}@champion{version} at {url} (POST {url}/invocations, GET {url}/health); "
        "Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )


def _listening_server(config, ready: Callable[[], None]):
    """uvicorn's server, calling `ready` once its socket listens (uvicorn imported when a server starts)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                ready()

    return Server(config)


def _best(preferred: str, fallback: str) -> str:
    import importlib.util

    return preferred if importlib.util.find_spec(preferred) is not None else fallback
