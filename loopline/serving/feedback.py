"""Label feedback: labels for served rows land in feedback/M, once per (request id, row).

The key. The server answers every scoring request with `X-Request-Id` (the client's, or one it made up), and
the inference log keeps it with each row's place in its request (`_request_id`, `_row_index` of
predictions/M). A label names the same two: `POST /feedback` with `{"request_id": ID, "labels": [one per row
of that request]}` or `{"items": [{"request_id": ID, "row": N, "label": L}, ...]}`, or `loopline feedback
--source FILE` (columns request_id, row, label). `X-Request-Key` stays the sticky routing key; it is not
part of the join.

Exactly once. Labels land with a Delta MERGE on the key: a key not in the table is inserted, a key with the
same label is left alone (posting the same label twice lands once), a key with another label takes the new
one (a correction; `_received_at` says when). A MERGE is idempotent by construction, so retrying one whose
answer was lost writes nothing twice, and two writers racing on the same key cannot both insert it: the
loser's commit conflicts and is re-run against the winner's rows (`delta.retry_conflicts`).

Durable before 2xx. `FeedbackQueue` (the endpoint's side) gathers what concurrent requests posted and
commits it as one MERGE (a group commit, a few per second however many clients post); a request is
answered 200 only after the commit that holds its labels succeeded. Past `max_queue_rows` waiting rows, or
when the lake keeps failing for `write_attempts` tries, it answers 503 with Retry-After: the client still
holds its labels and retries, so nothing is lost and no dead-letter table is needed (unlike the inference
log, which must never make a request wait).

Labels are typed by the contract's label column (`feedback_schema`) and checked by its rules (`check_label`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from loopline.data.contracts import Contract
from loopline.data.schemas import ARROW_TYPES
from loopline.serving.log_delivery import describe, retry_delay
from loopline.serving.protocol import RequestError
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

FEEDBACK_KIND = "feedback"
REQUEST_ID, ROW, LABEL = "_request_id", "_row_index", "label"
MAX_REQUEST_ID = 200  # the server keeps at most this much of an X-Request-Id


def feedback_schema(contract: Contract) -> pa.Schema:
    """feedback/M: the key, the label typed as the contract's label column, where it came from and when."""
    label_type = ARROW_TYPES[contract.columns[contract.label].type]
    return pa.schema(
        [
            pa.field(REQUEST_ID, pa.string(), nullable=False),
            pa.field(ROW, pa.int64(), nullable=False),
            pa.field(LABEL, label_type),
            pa.field("_source", pa.string()),
            pa.field("_received_at", pa.timestamp("us", tz="UTC")),
        ]
    )


# -- checking ---------------------------------------------------------------------------------------------


def check_label(value: Any, contract: Contract, *, text: bool = False) -> Any:
    """`value` as the contract's label type, or ValueError saying why. `text`: the value was read as a
    string (a CSV cell), so "1" is the int 1."""
    spec = contract.columns[contract.label]
    kind = spec.type
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("the label is missing")
    if text and isinstance(value, str) and kind in ("int", "float", "bool"):
        value = _parse_text(value.strip(), kind)
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer (the label {contract.label!r} is an int)")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number (the label {contract.label!r} is a float)")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false (the label {contract.label!r} is a bool)")
    elif kind in ("string", "category"):
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string (the label {contract.label!r} is a {kind})")
    else:
        raise ValueError(f"labels of type {kind} are not supported")
    if spec.values is not None and value not in spec.values:
        raise ValueError(f"{value!r} is not one of {list(spec.values)}")
    if spec.min is not None and value < spec.min:
        raise ValueError(f"{value!r} is below the minimum {spec.min}")
    if spec.max is not None and value > spec.max:
        raise ValueError(f"{value!r} is above the maximum {spec.max}")
    return value


def _parse_text(value: str, kind: str) -> Any:
    if kind == "bool":
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if kind == "int" and number.is_integer() and "." not in value else number


MAX_ROW = 2**63 - 1


def check_key(request_id: Any, row: Any) -> tuple[str, int]:
    """A (request id, row) key, or ValueError naming the part at fault."""
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id {request_id!r} is not a non-empty string")
    if len(request_id) > MAX_REQUEST_ID:
        raise ValueError(f"request_id is {len(request_id)} characters long (at most {MAX_REQUEST_ID})")
    if isinstance(row, float) and row.is_integer():
        row = int(row)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        raise ValueError(f"row {row!r} is not an integer >= 0")
    if row > MAX_ROW:  # the table's int64 column (a row past this was never scored either)
        raise ValueError(f"row {row} is beyond the largest row index {MAX_ROW}")
    return request_id, row


def parse_feedback(body: bytes, contract: Contract) -> list[tuple[str, int, Any]]:
    """A POST /feedback body as (request id, row, label) triples. RequestError 400 for a body in neither
    form, 422 naming every bad field (`items[3].label`) for values that break the key or the label's rules."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"request_id", "labels"} and isinstance(data["labels"], list):
        raw = [(data["request_id"], i, label, f"labels[{i}]") for i, label in enumerate(data["labels"])]
        where = {"request_id": "request_id"}
    elif isinstance(data, dict) and set(data) == {"items"} and isinstance(data["items"], list):
        raw, where = [], {}
        for i, item in enumerate(data["items"]):
            if not isinstance(item, dict) or set(item) != {"request_id", "row", "label"}:
                raise RequestError(
                    400, f"items[{i}] must be an object with exactly request_id, row and label"
                )
            raw.append((item["request_id"], item["row"], item["label"], f"items[{i}].label"))
    else:
        raise RequestError(
            400,
            'the body must be {"request_id": ID, "labels": [one per row]} or '
            '{"items": [{"request_id": ID, "row": N, "label": L}, ...]}, and nothing else',
        )
    out, errors = [], []
    if where:  # one request id for every label: checked once
        try:
            check_key(data["request_id"], 0)
        except ValueError as exc:
            raise RequestError(422, str(exc), fields=[{"field": "request_id", "message": str(exc)}]) from None
    for i, (request_id, row, label, label_field) in enumerate(raw):
        key_field = where.get("request_id") or f"items[{i}]"
        try:
            key = check_key(request_id, row)
        except ValueError as exc:
            errors.append({"field": key_field, "message": str(exc)})
            continue
        try:
            out.append((*key, check_label(label, contract)))
        except ValueError as exc:
            errors.append({"field": label_field, "message": str(exc)})
    if errors:
        shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise RequestError(422, f"{len(errors)} labels are not valid: {shown}{more}", fields=errors)
    return out


def to_table(triples: list[tuple[str, int, Any]], schema: pa.Schema, source: str) -> pa.Table:
    now = datetime.now(UTC)
    n = len(triples)
    return pa.table(
        {
            REQUEST_ID: [t[0] for t in triples],
            ROW: [t[1] for t in triples],
            LABEL: [t[2] for t in triples],
            "_source": [source] * n,
            "_received_at": [now] * n,
        },
        schema=schema,
    )


# -- the table ---------------------------------------------------------------------------------------------


def feedback_uri(lake: Lake, model: str) -> str:
    return lake.uri(FEEDBACK_KIND, model)


def merge_feedback(lake: Lake, model: str, batch: pa.Table) -> dict[str, int]:
    """MERGE `batch` into feedback/M (see the module docstring). Within the batch the last label of a key
    wins. Returns rows inserted, updated (another label) and unchanged (the same label again)."""
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    from loopline.storage import delta

    batch = _last_per_key(batch)
    uri = feedback_uri(lake, model)

    def attempt() -> dict[str, int]:
        table = delta.open_table(lake, uri)
        if table is None:
            try:  # mode "error": of two writers creating it, one wins and the other merges into its rows
                write_deltalake(uri, batch, mode="error", storage_options=lake.storage_options)
            except DeltaError as exc:
                if isinstance(exc, CommitFailedError) or "already exists" in str(exc):
                    raise CommitFailedError(f"{uri} was created concurrently: {exc}") from exc
                raise
            return {"inserted": batch.num_rows, "updated": 0, "unchanged": 0}
        merged = (
            table.merge(
                batch,
                predicate=f"t.{REQUEST_ID} = s.{REQUEST_ID} AND t.{ROW} = s.{ROW}",
                source_alias="s",
                target_alias="t",
            )
            .when_matched_update(
                updates={c: f"s.{c}" for c in (LABEL, "_source", "_received_at")},
                predicate=f"t.{LABEL} != s.{LABEL}",
            )
            .when_not_matched_insert_all()
            .execute()
        )
        inserted = int(merged.get("num_target_rows_inserted", 0))
        updated = int(merged.get("num_target_rows_updated", 0))
        return {"inserted": inserted, "updated": updated, "unchanged": batch.num_rows - inserted - updated}

    return delta.retry_conflicts(attempt, f"feedback/{model}")


def _last_per_key(batch: pa.Table) -> pa.Table:
    if batch.num_rows < 2:
        return batch
    keys = zip(batch.column(REQUEST_ID).to_pylist(), batch.column(ROW).to_pylist(), strict=True)
    last = {key: i for i, key in enumerate(keys)}
    if len(last) == batch.num_rows:
        return batch
    return batch.take(pa.array(sorted(last.values()), type=pa.int64()))


# -- the endpoint's queue ------------------------------------------------------------------------------------


class FeedbackUnavailable(Exception):
    """The labels were not committed (queue full, or the lake kept failing): answer 503, the client retries."""


class FeedbackQueue:
    """Group commits for POST /feedback: `submit` returns once the labels are in feedback/M."""

    def __init__(
        self,
        lake: Lake,
        model: str,
        *,
        max_queue_rows: int = 100_000,
        max_batch_rows: int = 50_000,
        write_attempts: int = 4,
        retry_seconds: float = 0.2,
        metrics=None,
    ):
        self.lake = lake
        self.model = model
        self.max_queue_rows = max_queue_rows
        self.max_batch_rows = max_batch_rows
        self.write_attempts = write_attempts
        self.retry_seconds = retry_seconds
        self.metrics = metrics
        self.queued_rows = 0
        self.commits = 0
        self._pending: deque[tuple[pa.Table, asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loopline-feedback", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued (its requests are still waiting for an answer), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    async def submit(self, batch: pa.Table) -> dict[str, Any]:
        n = batch.num_rows
        if n == 0:
            return {"accepted": 0}
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._stopping or self.queued_rows + n > self.max_queue_rows:
                raise FeedbackUnavailable(
                    f"{self.queued_rows} labels are waiting to be written (bound {self.max_queue_rows})"
                    if not self._stopping
                    else "the server is stopping"
                )
            self._pending.append((batch, future, loop))
            self.queued_rows += n
            self._cond.notify()
        self._gauge()
        return await future

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.feedback_queue.set(self.queued_rows)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                taken, rows = [], 0
                while self._pending and (
                    not taken or rows + self._pending[0][0].num_rows <= self.max_batch_rows
                ):
                    item = self._pending.popleft()
                    taken.append(item)
                    rows += item[0].num_rows
            try:
                self._commit(taken)
            except Exception:  # a bug must not end the thread: every later request would hang
                log.exception("feedback writer error (it carries on)")
            with self._cond:
                self.queued_rows -= rows
            self._gauge()

    def _commit(self, taken) -> None:
        batch = pa.concat_tables([t for t, _, _ in taken])
        error: BaseException | None = None
        outcome: dict[str, int] | None = None
        for attempt in range(1, self.write_attempts + 1):
            try:
                outcome = merge_feedback(self.lake, self.model, batch)
                break
            except Exception as exc:
                error = exc
                log.warning(
                    "feedback: commit of %d labels failed (try %d): %s",
                    batch.num_rows,
                    attempt,
                    describe(exc),
                )
                if self.metrics is not None:
                    self.metrics.feedback_write_errors.inc()
                if attempt < self.write_attempts:
                    time.sleep(retry_delay(self.retry_seconds, attempt))
        self.commits += outcome is not None
        if self.metrics is not None and outcome is not None:
            for key, value in outcome.items():
                self.metrics.feedback_rows.labels(key).inc(value)
        for table, future, loop in taken:
            if outcome is not None:
                result: Any = {"accepted": table.num_rows, "batch": outcome}
                loop.call_soon_threadsafe(_settle, future, result, None)
            else:
                failure = FeedbackUnavailable(
                    f"the labels could not be written to feedback/{self.model}: {describe(error)}"
                )
                loop.call_soon_threadsafe(_settle, future, None, failure)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
