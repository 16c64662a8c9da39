"""Loading, swapping and unloading model versions while the server keeps answering.

The manager resolves `@champion` (and `@challenger` when a split or shadow is configured) in the registry,
loads each version beside the one serving, switches the router's slot in one assignment, then drains and
frees the old slot. It runs at start-up, every `poll_seconds`, and on `POST /reload`; one refresh at a time.
Registry calls and model loading run on worker threads, so requests keep flowing during a swap.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import numpy as np

from loopline.errors import ModelError
from loopline.serving.batcher import MicroBatcher
from loopline.serving.inputs import TypedRows
from loopline.serving.metrics import ServingMetrics
from loopline.serving.model import LoadedModel, load_bundle_model
from loopline.serving.router import CHALLENGER, CHAMPION, Router, Slot

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    def resolve(self, name: str, alias: str) -> str | None: ...

    def download(self, name: str, version: str): ...


class ModelManager:
    def __init__(
        self,
        name: str,
        *,
        router: Router,
        metrics: ServingMetrics,
        executor: Executor,
        source: ModelSource | None,
        challenger_executor: Executor | None = None,
        max_batch_rows: int,
        max_wait_ms: float,
        device: str = "auto",
        poll_seconds: float = 10.0,
        pending: Callable[[], int] = lambda: 0,
        inline_max_rows: int = 0,
        max_queue_rows: int | None = None,
        on_scored: Callable[[LoadedModel, TypedRows, np.ndarray, list[tuple[Any, int]]], None] | None = None,
    ):
        self.name = name
        self.router = router
        self.metrics = metrics
        self.executor = executor
        # the challenger scores on its own thread: a slow or failing canary never queues the champion's
        # batches behind its calls (a model thread runs one call at a time)
        self.challenger_executor = challenger_executor or executor
        self.source = source
        self.max_batch_rows = max_batch_rows
        self.max_wait_ms = max_wait_ms
        self.device = device
        self.poll_seconds = poll_seconds
        self.pending = pending
        self.inline_max_rows = inline_max_rows
        self.max_queue_rows = max_queue_rows
        self.on_scored = on_scored  # every model call's rows (the inference log), with the model that scored
        self.last_error: str | None = None
        # the configured split, in force whenever no rollout tag on @challenger says otherwise
        self.static_split = (router.challenger_weight, router.shadow)
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task | None = None

    @property
    def wants_challenger(self) -> bool:
        weight, shadow = self.static_split
        return weight > 0 or shadow or hasattr(self.source, "resolve_rollout")

    # -- slots --------------------------------------------------------------------------------------
    def make_slot(self, model: LoadedModel, role: str) -> Slot:
        version = model.version
        batch_rows = self.metrics.batch_rows.labels(version)
        batch_requests = self.metrics.batch_requests.labels(version)

        def on_batch(rows: int, requests: int, seconds: float) -> None:
            batch_rows.observe(rows)
            batch_requests.observe(requests)

        on_scored = self.on_scored

        def scored(rows: TypedRows, predictions: np.ndarray, requests: list[tuple[Any, int]]) -> None:
            on_scored(model, rows, predictions, requests)

        batcher = MicroBatcher(
            model.score,
            check=model.checker.check_batch,  # requests queue parsed columns; the batch is checked at once
            on_scored=scored if on_scored is not None else None,
            executor=self.executor if role == CHAMPION else self.challenger_executor,
            max_batch_rows=self.max_batch_rows,
            max_wait_ms=self.max_wait_ms,
            pending=self.pending,
            on_batch=on_batch,
            inline_max_rows=self.inline_max_rows,
            max_queue_rows=self.max_queue_rows,
            call_seconds=model.warm_seconds,
        )
        batcher.start()
        return Slot(model=model, batcher=batcher, role=role)

    async def install(self, model: LoadedModel, role: str, trigger: str = "startup") -> None:
        """Put a loaded model in service as `role`, then drain and free the slot it replaces."""
        new = self.make_slot(model, role)
        old = self.router.champion if role == CHAMPION else self.router.challenger
        if role == CHAMPION:
            self.router.champion = new  # the switch: one assignment on the event loop
        else:
            self.router.challenger = new
        self.metrics.model_info.labels(self.name, model.version, role).set(1)
        if str(model.version).isdigit():  # registry versions are numbers; a local bundle's may not be
            self.metrics.model_version.labels(self.name, role).set(int(model.version))
        self.metrics.model_loads.labels(trigger).inc()
        if old is not None:
            await self.retire(old)
        log.info("serving %s version %s as %s (%s)", self.name, model.version, role, trigger)

    async def retire(self, slot: Slot) -> None:
        await slot.batcher.stop()  # requests already queued on it finish there
        current = {(s.model.version, s.role) for s in self.router.slots()}
        if (slot.model.version, slot.role) not in current:
            try:
                self.metrics.model_info.remove(self.name, slot.model.version, slot.role)
            except KeyError:
                pass
        if slot.role not in {s.role for s in self.router.slots()}:  # e.g. a challenger withdrawn
            try:
                self.metrics.model_version.remove(self.name, slot.role)
            except KeyError:
                pass
        device = str(slot.model.predictor.device)
        del slot
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # -- registry -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the champion (required) and the challenger (when wanted) before the server listens."""
        if self.router.champion is None:
            summary = await self.refresh("startup")
            if self.router.champion is None:
                raise ModelError(summary.get("error") or f"model {self.name!r} has no @champion alias")
        if self.source is not None and self.poll_seconds > 0:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except asyncio.CancelledError:
                pass
        for slot in self.router.slots():
            await slot.batcher.stop()

    async def refresh(self, trigger: str) -> dict[str, Any]:
        """Bring the served versions in line with the registry's aliases. Returns what changed."""
        if self.source is None:
            return {"changed": [], "error": None}
        async with self._lock:
            changed: list[str] = []
            roles = [CHAMPION] + ([CHALLENGER] if self.wants_challenger else [])
            error = None
            for role in roles:
                try:
                    if await self._refresh_role(role, trigger):
                        changed.append(role)
                except Exception as exc:  # a bad version must not take the serving one down
                    error = f"{role}: {exc}"
                    log.exception("could not load %s of %s", role, self.name)
            self.last_error = error
            return {"changed": changed, "error": error}

    async def _refresh_role(self, role: str, trigger: str) -> bool:
        if role == CHALLENGER and hasattr(self.source, "resolve_rollout"):
            version = await self._follow_rollout()
        else:
            version = await asyncio.to_thread(self.source.resolve, self.name, role)
        current = self.router.champion if role == CHAMPION else self.router.challenger
        if version is None:
            if role == CHALLENGER and current is not None:
                self.router.challenger = None  # the alias was removed: stop the split
                await self.retire(current)
                return True
            return False
        if current is not None and current.model.version == version:
            return False
        model = await asyncio.to_thread(self._load, version, role)
        await self.install(model, role, trigger)
        return True

    async def _follow_rollout(self) -> str | None:
        """The @challenger version to serve, applying its rollout tag's weight (a canary step, or shadow) so
        every replica splits alike; without a tag the configured split holds (none: the alias is ignored)."""
        version, rollout = await asyncio.to_thread(self.source.resolve_rollout, self.name)
        if rollout is None:
            self.router.challenger_weight, self.router.shadow = self.static_split
            weight, shadow = self.static_split
            return version if weight > 0 or shadow else None
        self.router.shadow = rollout.get("mode") == "shadow"
        self.router.challenger_weight = float(rollout["weight"])
        return version

    def _load(self, version: str, role: str) -> LoadedModel:
        bundle_dir = self.source.download(self.name, version)
        return load_bundle_model(bundle_dir, name=self.name, version=version, alias=role, device=self.device)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.refresh("poll")
