"""How loopline's S3 clients retry: boto3 (the lake's own client), delta-rs and MLflow's artifact client.

S3 answers 503 SlowDown under load, resets connections and stalls; every request must be retried, and
each of the three clients has its own knobs. One set of settings, from the environment, feeds all three
(read each time a client or a set of storage options is made; defaults in brackets):

    LOOPLINE_S3_MAX_ATTEMPTS  [10]        tries per request, the first included. 10 because at a 20% fault
                                          rate 0.2**10 = 1e-7 per request; boto3's default (standard mode)
                                          has 3 (0.8% of requests would fail), delta-rs 11.
    LOOPLINE_S3_RETRY_MODE    [standard]  boto3's mode: standard (exponential backoff with jitter, up to
                                          20 s) or adaptive (also rate-limits the client after throttling)
    LOOPLINE_S3_CONNECT_TIMEOUT [5]       seconds to open a connection
    LOOPLINE_S3_READ_TIMEOUT  [60]        seconds: boto3 per socket read; delta-rs for a whole request. It
                                          must exceed any stall a commit may meet: delta-rs does not retry a
                                          timed-out commit (see below).
    LOOPLINE_S3_RETRY_TIMEOUT [180]       seconds after which delta-rs stops retrying one request

The price of 10 tries: an endpoint that refuses connections (a wrong URL) fails after boto3's backoff, about
a minute (delta-rs: up to the retry timeout); set LOOPLINE_S3_MAX_ATTEMPTS lower to fail fast.

- boto3 (`make_s3_client`: checkpoints, sources, lake objects): `botocore.config.Config(retries=
  {"total_max_attempts", "mode"}, connect_timeout, read_timeout)` (boto3 1.44's default: standard mode,
  3 tries, 60 s timeouts; Config's "max_attempts" would count retries, not tries). boto3 retries 5xx,
  throttling codes (SlowDown), connection errors and read timeouts of a request, but not an error while the
  caller reads a streamed body (`get_object(...)["Body"].read()`): `read_object` retries those.
- delta-rs 1.6.6 (object_store 0.13.2), `s3_storage_options`: `max_retries` (= attempts - 1),
  `retry_timeout`, `timeout`, `connect_timeout` (durations such as "60s" or "500ms"; delta-rs ignores
  unknown keys silently, so each was checked by its effect through the proxy).
  object_store retries 5xx, 429 and connection errors, and re-reads an object GET's body that broke. It does
  not retry (measured through tests/reliability/s3_proxy.py): a LIST or an error (404) response whose
  body breaks, nor a commit (a conditional PUT of `_delta_log/N.json`) that timed out or whose connection
  reset, sent or not: it cannot tell whether the commit landed. Those surface as an error of the stage;
  its rerun (the Prefect task's retries) is exactly-once through the stage's Delta app transactions.
- MLflow's S3 artifact client (when an experiment's artifact location or a tracking server's artifact
  root is s3://): MLflow makes its own boto3 client with no retry settings, so botocore reads
  `AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE` from the environment, and the endpoint from
  `MLFLOW_S3_ENDPOINT_URL` (else `AWS_ENDPOINT_URL`). `configure_mlflow_s3` sets the first two from the
  settings above unless they are set already; `loopline.packaging.registry.registry_client` calls it, so
  training, promotion, serving and the processes they start (which inherit the environment) all use them.
  It must run before MLflow makes its first S3 client: MLflow caches clients by endpoint, not by settings.
  Uploads and downloads go through s3transfer, which also re-reads a download whose body broke. loopline
  itself keeps MLflow artifacts under $LOOPLINE_HOME (embedded store) or the tracking server's root; S3
  artifacts are the user's choice (`mlflow server --default-artifact-root s3://...`).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import BinaryIO

from loopline.errors import ConfigError


@dataclass(frozen=True)
class S3Retries:
    max_attempts: int = 10
    mode: str = "standard"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    retry_timeout_s: float = 180.0

    @classmethod
    def from_env(cls) -> S3Retries:
        d = cls()
        mode = os.environ.get("LOOPLINE_S3_RETRY_MODE", d.mode)
        if mode not in ("standard", "adaptive", "legacy"):
            raise ConfigError(f"LOOPLINE_S3_RETRY_MODE={mode!r}: expected standard, adaptive or legacy")
        return cls(
            max_attempts=int(_number("LOOPLINE_S3_MAX_ATTEMPTS", d.max_attempts, minimum=1)),
            mode=mode,
            connect_timeout_s=_number("LOOPLINE_S3_CONNECT_TIMEOUT", d.connect_timeout_s),
            read_timeout_s=_number("LOOPLINE_S3_READ_TIMEOUT", d.read_timeout_s),
            retry_timeout_s=_number("LOOPLINE_S3_RETRY_TIMEOUT", d.retry_timeout_s),
        )

    def botocore_config(self):
        from botocore.config import Config

        return Config(
            retries={"total_max_attempts": self.max_attempts, "mode": self.mode},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
        )

    def delta_options(self) -> dict[str, str]:
        """object_store's retry and client options, as delta-rs storage options take them."""
        return {
            "max_retries": str(self.max_attempts - 1),
            "retry_timeout": _duration(self.retry_timeout_s),
            "timeout": _duration(self.read_timeout_s),
            "connect_timeout": _duration(self.connect_timeout_s),
        }

    def mlflow_environment(self) -> dict[str, str]:
        return {"AWS_MAX_ATTEMPTS": str(self.max_attempts), "AWS_RETRY_MODE": self.mode}


def configure_mlflow_s3() -> None:
    """Give MLflow's S3 artifact client (botocore, configured from the environment) loopline's retries,
    unless the environment already says otherwise."""
    for name, value in S3Retries.from_env().mlflow_environment().items():
        os.environ.setdefault(name, value)


def read_object(client, bucket: str, key: str, *, attempts: int, sink: BinaryIO | None = None) -> bytes:
    """GET an object and read its body (into `sink` when given, else returned), trying the whole GET again
    when the body breaks mid-way: boto3 retries a request, not the caller's read of its streamed body."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    for attempt in range(1, attempts + 1):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            if sink is None:
                return body.read()
            sink.seek(0)
            sink.truncate()
            shutil.copyfileobj(body, sink, 1 << 20)
            return b""
        except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError):
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0, min(5.0, 0.1 * 2**attempt)))  # jittered, like boto3's own
    raise AssertionError("unreachable")


def _number(name: str, default: float, minimum: float = 0.001) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:
        raise ConfigError(f"{name}={raw!r}: expected a number of at least {minimum:g}")
    return value


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"
