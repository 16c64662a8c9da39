"""Make what a batch job measured reachable by Prometheus: a textfile and, when configured, a Pushgateway.

A batch job (ingest, training, a drift check) is gone before Prometheus scrapes it, so its gauges go where
a scraper finds them later:
- `$LOOPLINE_HOME/metrics/<job>[_<grouping values>].prom`, replaced atomically (a reader sees the old file or
  the new one). `python -m loopline.monitoring.exporter` serves every such file; node_exporter's textfile
  collector reads the same folder.
- `LOOPLINE_PUSHGATEWAY_URL` set: the same text is PUT to `{url}/metrics/job/<job>/<label>/<value>...`
  (Pushgateway's API; PUT replaces the whole group, so a job's last state wins). That is the path for
  Kubernetes, where a flow run is a short-lived pod whose files nobody else sees. Scrape the Pushgateway
  with `honor_labels: true` so the pushed `model`/`dataset` labels stay as they are.

Publishing never fails the job: a full disk or an unreachable Pushgateway is a warning in the log, and the
URL in that warning has its credentials removed. `Families` builds the exposition text with prometheus_client
(escaping, `_total` suffixes), so every job writes the format the parser on the other side reads.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PUSHGATEWAY_ENV = "LOOPLINE_PUSHGATEWAY_URL"
METRICS_DIR = "metrics"  # under $LOOPLINE_HOME
PUSH_TIMEOUT_SECONDS = 5.0  # one try: the next publish carries newer values anyway
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """`text` with the user:password part of every URL in it replaced by `***`."""
    return _USERINFO.sub("***@", text)


class Families:
    """Metric families of one job, rendered as Prometheus text. Labels are keyword arguments; a family
    appears once however many samples it has."""

    def __init__(self) -> None:
        self._families: dict[str, object] = {}

    def gauge(self, name: str, help_text: str, value: float, **labels: str) -> Families:
        return self._add("gauge", name, help_text, value, labels)

    def counter(self, name: str, help_text: str, value: float, **labels: str) -> Families:
        return self._add("counter", name, help_text, value, labels)

    def _add(self, kind: str, name: str, help_text: str, value: float, labels: dict[str, str]) -> Families:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        family = self._families.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = self._families[name] = cls(name, help_text, labels=list(labels))
        family.add_metric([str(labels[k]) for k in family._labelnames], float(value))  # type: ignore[attr-defined]
        return self

    def text(self) -> str:
        return render_families(self._families.values())


def render_families(families: Iterable[object]) -> str:
    """The Prometheus text format of prometheus_client metric families."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Static:
        def __init__(self, items):
            self.items = list(items)

        def collect(self):
            return iter(self.items)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(families))
    return generate_latest(registry).decode()


def textfile_path(home: str | os.PathLike, job: str, grouping: dict[str, str] | None = None) -> Path:
    """`<home>/metrics/<job>[_<value>...].prom`: one file per job and grouping (a model, a dataset).
    Grouping values are names already checked by `loopline.storage.names` (no '/', no leading '.')."""
    stem = "_".join([job, *(grouping or {}).values()])
    return Path(home) / METRICS_DIR / f"{stem}.prom"


def push_url(base: str, job: str, grouping: dict[str, str] | None = None) -> str:
    """Pushgateway's group URL: `{base}/metrics/job/<job>/<label>/<value>...`. A value that is empty or holds
    a '/' goes base64url-encoded as `<label>@base64/<encoded>`, as Pushgateway's API asks."""
    parts = [base.rstrip("/"), "metrics", "job", _path_value("job", job)[1]]
    for label, value in (grouping or {}).items():
        key, encoded = _path_value(label, value)
        parts += [key, encoded]
    return "/".join(parts)


def _path_value(label: str, value: str) -> tuple[str, str]:
    if value == "" or "/" in value:
        return f"{label}@base64", base64.urlsafe_b64encode(value.encode()).decode() or "="
    return label, urllib.parse.quote(value, safe="")


def push(url: str, text: str, timeout: float = PUSH_TIMEOUT_SECONDS) -> None:
    """PUT `text` to a Pushgateway group URL. Credentials in the URL go in a Basic auth header, never in the
    request line. Raises on failure (callers log it)."""
    parsed = urllib.parse.urlsplit(url)
    headers = {"Content-Type": CONTENT_TYPE}
    if parsed.username is not None:
        user = urllib.parse.unquote(parsed.username)
        password = urllib.parse.unquote(parsed.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        url = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    request = urllib.request.Request(url, data=text.encode(), method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def publish(
    home: str | os.PathLike,
    job: str,
    text: str,
    grouping: dict[str, str] | None = None,
    *,
    pushgateway_url: str | None = None,
) -> Path:
    """Write `text` to the job's textfile and push it to the Pushgateway (`pushgateway_url`, default
    $LOOPLINE_PUSHGATEWAY_URL; none: no push). Never raises: failures are logged. Returns the textfile."""
    from loopline.storage.files import atomic_write_text

    path = textfile_path(home, job, grouping)
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        log.warning("could not write metrics file %s: %s", path, exc)
    base = pushgateway_url if pushgateway_url is not None else os.environ.get(PUSHGATEWAY_ENV)
    if base:
        target = push_url(base, job, grouping)
        try:
            push(target, text)
        except Exception as exc:  # metrics must never fail the job they describe
            log.warning(
                "could not push metrics to %s: %s",
                redact_url(target),
                redact_url(f"{type(exc).__name__}: {exc}"),
            )
    return path


class BackgroundPublisher:
    """`publish` on a thread of its own, for callers on a hot path (a training loop): `submit` returns at
    once; a submission made while the previous one is still being written replaces the one waiting (only
    the newest state matters). `close` waits for the last one."""

    def __init__(self, home: str | os.PathLike, job: str, grouping: dict[str, str] | None = None):
        self.home, self.job, self.grouping = home, job, grouping
        self._pending: str | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"loopline-metrics-{job}", daemon=True)
        self._thread.start()

    def submit(self, text: str) -> None:
        with self._lock:
            self._pending = text
            self._lock.notify()

    def close(self, timeout: float = PUSH_TIMEOUT_SECONDS + 5) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                text, self._pending = self._pending, None
                closed = self._closed
            if text is not None:
                publish(self.home, self.job, text, self.grouping)
            if closed and text is None:
                return
