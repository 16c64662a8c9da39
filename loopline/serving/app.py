"""The HTTP face: a raw ASGI application (no framework) speaking MLflow's scoring protocol.

Why raw ASGI on uvicorn (httptools parser, uvloop event loop): a scoring request is small and the model
call is batched, so per-request framework work is what limits throughput on a small machine. A plain ASGI
callable with a dict of routes, orjson and no request/response objects keeps that cost to a few tens of
microseconds; routing, validation and dependency injection of a framework would cost more than the model.

Routes: POST /invocations, POST /feedback (labels, `feedback`), GET /ping, /health, /version, /metrics,
POST /reload (token), GET /openapi.json.
Status codes: 400 bad JSON or a body in no MLflow format, 413 body over `max_body_bytes`, 415 a content
type other than JSON, 422 input that breaks the contract (naming the fields), 503 with Retry-After when no
model is loaded or a backpressure bound is reached (`backpressure`), 500 only when the model itself fails.
Every one of them is in /openapi.json.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from loopline.serving import RELOAD_TOKEN_ENV
from loopline.serving.backpressure import Backpressure
from loopline.serving.batcher import QueueFull
from loopline.serving.feedback import FeedbackQueue, FeedbackUnavailable, parse_feedback
from loopline.serving.inference_log import InferenceLog
from loopline.serving.inputs import TypedRows
from loopline.serving.manager import ModelManager
from loopline.serving.metrics import ServingMetrics
from loopline.serving.model import LoadedModel
from loopline.serving.protocol import Columns, RequestError, encode_predictions, parse_body
from loopline.serving.router import SHADOW, Router, Slot

log = logging.getLogger(__name__)

_JSON = [(b"content-type", b"application/json")]


class ServingApp:
    def __init__(
        self,
        *,
        manager: ModelManager,
        router: Router,
        metrics: ServingMetrics,
        inference_log: InferenceLog | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        reload_token: str | None = None,
        after_load: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        backpressure: Backpressure | None = None,
    ):
        self.manager = manager
        self.router = router
        self.metrics = metrics
        self.inference_log = inference_log
        self.feedback: FeedbackQueue | None = None  # set after load when serving.feedback (server.py)
        self.max_body_bytes = max_body_bytes
        self.backpressure = backpressure or Backpressure(metrics)
        self.reload_token = reload_token if reload_token is not None else os.environ.get(RELOAD_TOKEN_ENV)
        self.parsing = 0  # requests between "received" and "rows queued": the batcher waits only for these
        self._after_load = after_load
        self.startup_error: BaseException | None = None
        self._on_shutdown = on_shutdown
        self._shadow_tasks: set[asyncio.Task] = set()
        self._per_slot: dict[tuple[str, str], _SlotMetrics] = {}
        self._answered = metrics.requests.labels("invocations", "200")
        # request ids: 64 random bits from a generator seeded by the OS (a syscall per request costs more)
        self._new_request_id = functools.partial(_hex64, random.Random(os.urandom(32)).getrandbits)
        self._routes: dict[tuple[str, str], Callable] = {
            ("POST", "/invocations"): self._invocations,
            ("POST", "/feedback"): self._feedback,
            ("GET", "/ping"): self._ping,
            ("GET", "/health"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/reload"): self._reload,
            ("GET", "/openapi.json"): self._openapi,
        }
        self._paths = {path for _, path in self._routes}
        metrics.watch_queue(lambda: sum(s.batcher.queued_rows for s in router.slots()))
        # scoring requests admitted and not yet answered: the backpressure count, read at scrape time
        metrics.in_flight.set_function(lambda: self.backpressure.inflight)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Load the models, then start the inference log (it takes its schema from the champion's contract)."""
        await self.manager.start()
        if self._after_load is not None:
            await self._after_load()
        if self.inference_log is not None:
            self.inference_log.start()
        if self.feedback is not None:
            self.feedback.start()

    async def shutdown(self) -> None:
        """Finish queued batches and shadow calls, then write the inference log out."""
        await self.manager.stop()
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        if self.inference_log is not None:
            await asyncio.to_thread(self.inference_log.stop)
        if self.feedback is not None:
            await asyncio.to_thread(self.feedback.stop)
        if self._on_shutdown is not None:
            await self._on_shutdown()

    # -- ASGI ----------------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    self.startup_error = exc
                    log.debug("start-up failed: %s", exc)  # the server reports it (run_server raises it)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        path, method = scope["path"], scope["method"]
        handler = self._routes.get((method, path))
        if handler is None:
            status = 405 if path in self._paths else 404
            error = RequestError(
                status, f"{method} {path}: " + ("method not allowed" if status == 405 else "no such route")
            )
            self.metrics.requests.labels("other", str(status)).inc()
            allow = ", ".join(sorted(m for m, p in self._routes if p == path)).encode()
            await _respond(
                send, status, error.body(), [*_JSON, (b"allow", allow)] if status == 405 else _JSON
            )
            return
        await handler(scope, receive, send)

    # -- scoring -------------------------------------------------------------------------------------
    async def _invocations(self, scope: dict, receive: Callable, send: Callable) -> None:
        bp = self.backpressure
        champion = self.router.champion
        # refused before the body is read (no buffer, no parsing): too many requests in flight, or the
        # champion's queue is full already (parsing this one would be work thrown away)
        if champion is not None and champion.batcher.full:
            refusal = bp.refused(
                f"{champion.batcher.queued_rows} rows are waiting for the model (bound "
                f"{champion.batcher.max_queue_rows}); retry after {bp.retry_after_seconds} s",
                "queue",
            )
        elif not bp.admit():
            refusal = bp.refused(
                f"the server is handling its bound of {bp.max_inflight_requests} requests; "
                f"retry after {bp.retry_after_seconds} s"
            )
        else:
            refusal = None
        if refusal is not None:
            self.metrics.requests.labels("invocations", "503").inc()
            self.metrics.errors.labels("overloaded").inc()
            await _respond(send, 503, *refusal)
            return
        try:
            await self._score(scope, receive, send)
        finally:
            bp.release()

    async def _score(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        self.parsing += 1
        try:
            try:
                body = await self._read_body(headers, receive)
                cols = parse_body(body)
                slot, shadow = self.router.pick(headers.get(b"x-request-key"))
            finally:
                self.parsing -= 1
            request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:200] or self._new_request_id()
            n_rows = cols.n_rows
            if n_rows == 0:  # no rows: nothing to check a column against (records carry no names)
                predictions: Any = []
            else:
                try:
                    # checked against the contract with the rest of its micro-batch (422 raised here)
                    predictions = await slot.batcher.submit(cols, (request_id, slot.role))
                except (QueueFull, RequestError):
                    raise
                except Exception as exc:
                    self.metrics.version_errors.labels(slot.model.version, slot.role).inc()
                    raise _ModelFailure(str(exc)) from exc
            per_slot = self._slot_metrics(slot)
            await _respond(
                send,
                200,
                encode_predictions(predictions),
                [*per_slot.headers, (b"x-request-id", request_id.encode("latin-1"))],
            )
            self._answered.inc()
            per_slot.requests.inc()
            per_slot.rows.inc(n_rows)
            per_slot.latency.observe(time.perf_counter() - started)
            if shadow is not None and n_rows:
                self._start_shadow(shadow, cols, request_id)
        except RequestError as exc:
            self.metrics.requests.labels("invocations", str(exc.status)).inc()
            self.metrics.errors.labels(_reason(exc)).inc()
            await _respond(send, exc.status, exc.body(), _JSON)
        except QueueFull as exc:  # the model's queue is at its bound
            self.metrics.requests.labels("invocations", "503").inc()
            self.metrics.errors.labels("overloaded").inc()
            body, out = self.backpressure.refused(
                f"{exc}; retry after {self.backpressure.retry_after_seconds} s", "queue"
            )
            await _respond(send, 503, body, out)
        except LookupError as exc:  # no model loaded yet
            self.metrics.requests.labels("invocations", "503").inc()
            self.metrics.errors.labels("no_model").inc()
            await _respond(send, 503, *self.backpressure.refused(str(exc)))
        except _ModelFailure as exc:
            self.metrics.requests.labels("invocations", "500").inc()
            self.metrics.errors.labels("model").inc()
            await _respond(
                send,
                500,
                orjson.dumps({"error_code": "INTERNAL_ERROR", "message": f"model call failed: {exc}"}),
                _JSON,
            )

    def _slot_metrics(self, slot: Slot) -> _SlotMetrics:
        """The metric series and response headers of a (version, role), looked up once, not per request."""
        key = (slot.model.version, slot.role)
        found = self._per_slot.get(key)
        if found is None:
            if len(self._per_slot) > 64:  # many swaps: stay bounded
                self._per_slot.clear()
            found = self._per_slot[key] = _SlotMetrics(self.metrics, *key)
        return found

    def log_scored(
        self, model: LoadedModel, rows: TypedRows, predictions: Any, requests: list[tuple[Any, int]]
    ) -> None:
        """A model call's rows into the inference log, as one entry (the micro-batcher calls this)."""
        if self.inference_log is not None:
            self.inference_log.append_batch(
                rows,
                predictions,
                version=model.version,
                requests=[(request_id, role, n) for (request_id, role), n in requests],
                contract=model.contract,
            )

    async def _read_body(self, headers: dict[bytes, bytes], receive: Callable) -> bytes:
        content_type = headers.get(b"content-type", b"application/json").lower()
        if b"json" not in content_type:
            raise RequestError(
                415,
                f"content type {content_type.decode('latin-1')!r} is not supported; send application/json",
            )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(
                413, f"request body of {int(declared)} bytes is over the limit of {self.max_body_bytes}"
            )
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(413, f"request body is over the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _start_shadow(self, slot: Slot, cols: Columns, request_id: str) -> None:
        """A shadow scoring, unless the shadow bound is reached (then skipped and counted)."""
        if not self.backpressure.admit_shadow():
            return
        task = asyncio.get_running_loop().create_task(self._shadow(slot, cols, request_id))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)
        task.add_done_callback(self.backpressure.release_shadow)

    async def _shadow(self, slot: Slot, cols: Columns, request_id: str) -> None:
        """Score the challenger on the same rows; logged (by its batcher), never returned. Its failures,
        a contract check included, only count."""
        version = slot.model.version
        contract = slot.model.contract
        if contract.hash != self.router.champion.model.contract.hash:
            # another contract: the columns it names (one it dropped is no error), checked by its rules
            cols = Columns(
                {k: v for k, v in cols.data.items() if k in contract.columns}, cols.n_rows, "shadow"
            )
        started = time.perf_counter()
        try:
            await slot.batcher.submit(cols, (request_id, SHADOW))
        except QueueFull:
            self.metrics.shadow_skipped.labels("queue").inc()
            return
        except Exception:
            self.metrics.version_errors.labels(version, SHADOW).inc()
            return
        self.metrics.version_requests.labels(version, SHADOW).inc()
        self.metrics.rows.labels(version, SHADOW).inc(cols.n_rows)
        self.metrics.latency.labels(version, SHADOW).observe(time.perf_counter() - started)

    # -- label feedback (loopline.serving.feedback) -----------------------------------------------------
    async def _feedback(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Labels keyed by (X-Request-Id, row); 200 once they are committed to feedback/M."""
        from loopline.serving.feedback import feedback_schema, to_table

        try:
            body = await self._read_body(dict(scope["headers"]), receive)
            champion = self.router.champion
            if champion is None:
                raise LookupError(f"model {self.manager.name!r} is not loaded yet")
            contract = champion.model.contract
            triples = parse_feedback(body, contract)
            if self.feedback is None:
                raise RequestError(
                    403, "feedback is disabled on this server (serving.feedback, inference_log)"
                )
            result = await self.feedback.submit(to_table(triples, feedback_schema(contract), "api"))
        except RequestError as exc:
            self.metrics.requests.labels("feedback", str(exc.status)).inc()
            await _respond(send, exc.status, exc.body(), _JSON)
            return
        except (FeedbackUnavailable, LookupError) as exc:
            self.metrics.requests.labels("feedback", "503").inc()
            await _respond(send, 503, *self.backpressure.refused(str(exc)))
            return
        self.metrics.requests.labels("feedback", "200").inc()
        await _respond(send, 200, orjson.dumps({"accepted": result["accepted"]}), _JSON)

    # -- operations ----------------------------------------------------------------------------------
    async def _ping(self, scope, receive, send) -> None:
        status = 200 if self.router.champion is not None else 503
        self.metrics.requests.labels("ping", str(status)).inc()
        await _respond(send, status, b"\n", [(b"content-type", b"application/json")])

    async def _health(self, scope, receive, send) -> None:
        champion = self.router.champion
        status = 200 if champion is not None else 503
        body = {"status": "ok" if champion is not None else "no model loaded", "model": self.manager.name}
        if champion is not None:
            body["version"] = champion.model.version
        if self.manager.last_error:
            body["last_error"] = self.manager.last_error
        self.metrics.requests.labels("health", str(status)).inc()
        await _respond(send, status, orjson.dumps(body), _JSON)

    def version_info(self) -> dict[str, Any]:
        champion, challenger = self.router.champion, self.router.challenger
        info: dict[str, Any] = (
            champion.model.describe()
            if champion is not None
            else {"model": self.manager.name, "version": None}
        )
        info["challenger"] = challenger.model.describe() if challenger is not None else None
        info["challenger_weight"] = self.router.challenger_weight
        info["shadow"] = self.router.shadow
        return info

    async def _version(self, scope, receive, send) -> None:
        self.metrics.requests.labels("version", "200").inc()
        await _respond(send, 200, orjson.dumps(self.version_info()), _JSON)

    async def _metrics(self, scope, receive, send) -> None:
        if self.inference_log is not None:
            self.metrics.log_queue.set(self.inference_log.queued_rows)
        self.metrics.requests.labels("metrics", "200").inc()
        await _respond(
            send, 200, self.metrics.render(), [(b"content-type", self.metrics.content_type.encode())]
        )

    async def _reload(self, scope, receive, send) -> None:
        """Check the registry now and swap if an alias moved; answers with /version after the swap."""
        headers = dict(scope["headers"])
        given = headers.get(b"x-reload-token") or _bearer(headers.get(b"authorization"))
        if not self.reload_token:
            status, body = (
                403,
                RequestError(403, f"reload is disabled: set {RELOAD_TOKEN_ENV} for the server").body(),
            )
        elif given is None or not hmac.compare_digest(given, self.reload_token.encode()):
            status, body = 401, RequestError(401, "missing or wrong reload token").body()
        else:
            summary = await self.manager.refresh("reload")
            status = 200 if summary["error"] is None else 502
            body = orjson.dumps(
                {**self.version_info(), "changed": summary["changed"], "error": summary["error"]}
            )
        self.metrics.requests.labels("reload", str(status)).inc()
        await _respond(send, status, body, _JSON)

    async def _openapi(self, scope, receive, send) -> None:
        from loopline.serving.openapi import openapi_document

        champion = self.router.champion
        doc = openapi_document(champion.model.contract if champion is not None else None, self.max_body_bytes)
        await _respond(send, 200, orjson.dumps(doc), _JSON)


class _ModelFailure(Exception):
    pass


def _reason(exc: RequestError) -> str:
    return {400: "bad_request", 413: "too_large", 415: "media_type", 422: "contract"}.get(
        exc.status, str(exc.status)
    )


def _bearer(value: bytes | None) -> bytes | None:
    if value and value[:7].lower() == b"bearer ":
        return value[7:].strip()
    return None


def _hex64(bits: Callable[[int], int]) -> str:
    return f"{bits(64):016x}"


class _SlotMetrics:
    """One (version, role)'s metric series and response headers, bound once."""

    __slots__ = ("headers", "latency", "requests", "rows")

    def __init__(self, metrics: ServingMetrics, version: str, role: str):
        self.requests = metrics.version_requests.labels(version, role)
        self.rows = metrics.rows.labels(version, role)
        self.latency = metrics.latency.labels(version, role)
        self.headers = [*_JSON, (b"x-model-version", version.encode())]


async def _respond(send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
