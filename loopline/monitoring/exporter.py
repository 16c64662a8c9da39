"""`python -m loopline.monitoring.exporter`: what batch jobs measured, and which version is @champion, for
Prometheus.

GET /metrics serves:
- every `*.prom` under `$LOOPLINE_HOME/metrics` (what `loopline.monitoring.publish` writes: training progress
  and DCGM-named GPU gauges, ingest counts, drift scores), merged so each family's HELP and TYPE appear once
  and a series two files both hold appears once (the newest file's). A file that does not parse is left
  out and counted in `loopline_exporter_textfile_errors`; each file's age is
  `loopline_exporter_textfile_mtime_seconds{file}`;
- `loopline_registry_champion_version{model}`: every registered model with a @champion, read from MLflow
  (MLFLOW_TRACKING_URI, else the sqlite database under the home) by a background thread every
  `--registry-seconds`, so a slow or unreachable registry never slows a scrape; `loopline_exporter_registry_up`
  says whether the last read worked. An alert compares it with `loopline_serving_model_version`.
GET /health answers 200 with a small JSON status.

It runs beside the workers (same LOOPLINE_HOME volume) and binds 127.0.0.1 unless told otherwise. The
tracking URI may carry credentials: no response and no log line ever shows them (`redact_url`).
Core only: no Prefect import; MLflow is imported by the registry thread, not at start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from loopline.monitoring.publish import CONTENT_TYPE, METRICS_DIR, Families, redact_url

log = logging.getLogger("loopline.exporter")

DEFAULT_PORT = 9101
REGISTRY_REFRESH_SECONDS = 15.0
_SAMPLE_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


# -- textfiles -------------------------------------------------------------------------------------------


class _Family:
    __slots__ = ("name", "help", "type", "samples")

    def __init__(self, name: str):
        self.name = name
        self.help: str | None = None
        self.type: str | None = None
        self.samples: dict[str, str] = {}  # series key (name + labels) -> line


def merge_textfiles(directory: Path) -> tuple[str, Families]:
    """The merged exposition of every *.prom in `directory` (newest file first wins a duplicate series),
    and the exporter's own gauges about those files."""
    from prometheus_client.parser import text_string_to_metric_families

    own = Families()
    errors = 0
    families: dict[str, _Family] = {}
    files = []
    for path in directory.glob("*.prom") if directory.is_dir() else ():
        try:
            files.append((path.stat().st_mtime, path))
        except OSError:  # replaced or removed while listing
            continue
    for mtime, path in sorted(files, reverse=True):
        try:
            text = path.read_text()
            for _ in text_string_to_metric_families(text):  # only well-formed files get in
                pass
        except Exception as exc:
            errors += 1
            log.warning("skipping %s: not Prometheus text (%s)", path.name, exc)
            continue
        _merge_text(text, families)
        own.gauge(
            "loopline_exporter_textfile_mtime_seconds",
            "modification time of each metrics file served (Unix time)",
            mtime,
            file=path.name,
        )
    own.gauge(
        "loopline_exporter_textfile_errors",
        "metrics files left out of this scrape because they did not parse",
        errors,
    )
    lines: list[str] = []
    for name in sorted(families):
        fam = families[name]
        lines += [x for x in (fam.help, fam.type) if x]
        lines += fam.samples.values()
    return "\n".join(lines) + ("\n" if lines else ""), own


def _merge_text(text: str, families: dict[str, _Family]) -> None:
    current: _Family | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.setdefault(parts[2], _Family(parts[2]))
                if parts[1] == "HELP" and current.help is None:
                    current.help = line
                elif parts[1] == "TYPE" and current.type is None:
                    current.type = line
            continue
        name = _SAMPLE_NAME.match(line).group()  # type: ignore[union-attr]  # the parser accepted the line
        if current is None or not (name == current.name or name.startswith(current.name + "_")):
            current = families.setdefault(name, _Family(name))
        key = line[: line.rindex("}") + 1] if line[len(name) : len(name) + 1] == "{" else name
        current.samples.setdefault(key, line)


# -- the registry ----------------------------------------------------------------------------------------


class ChampionCache:
    """@champion versions from MLflow, refreshed by a daemon thread; readers never wait for MLflow."""

    def __init__(self, tracking_uri: str, refresh_seconds: float = REGISTRY_REFRESH_SECONDS):
        self.tracking_uri = tracking_uri
        self.refresh_seconds = refresh_seconds
        self.versions: dict[str, float] = {}
        self.up: bool | None = None  # None: not read yet
        self.last_success: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopline-registry", daemon=True)

    def start(self) -> ChampionCache:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            self.refresh()
            if self._stop.wait(self.refresh_seconds):
                return

    def refresh(self) -> None:
        try:
            versions = read_champions(self.tracking_uri)
        except Exception as exc:  # MLflow's messages carry the URI, credentials included: redact
            message = redact_url(f"{type(exc).__name__}: {exc}").replace(self.tracking_uri, "<tracking uri>")
            log.warning("registry read failed: %s", message[:500])
            with self._lock:
                self.up = False
            return
        with self._lock:
            self.versions, self.up, self.last_success = versions, True, time.time()

    def families(self) -> Families:
        f = Families()
        with self._lock:
            versions, up = dict(self.versions), self.up
        for model, version in sorted(versions.items()):
            f.gauge(
                "loopline_registry_champion_version",
                "the registered model version the @champion alias points at",
                version,
                model=model,
            )
        if up is not None:  # absent until the first read has finished
            f.gauge(
                "loopline_exporter_registry_up",
                "1 when the last read of the MLflow registry worked, 0 when it failed",
                int(up),
            )
        return f


def read_champions(tracking_uri: str) -> dict[str, float]:
    """{model: @champion version} for every registered model that has one. A sqlite database that does not
    exist yet holds no model: it is not created here (training creates it)."""
    if tracking_uri.startswith("sqlite:///"):
        if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            return {}
    from loopline.packaging.registry import CHAMPION, registry_client

    client = registry_client(tracking_uri)
    out: dict[str, float] = {}
    token = None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        for model in page:
            version = (model.aliases or {}).get(CHAMPION)
            if version is not None:
                out[model.name] = float(version)
        token = page.token
        if not token:
            return out


# -- HTTP ------------------------------------------------------------------------------------------------


class Exporter:
    def __init__(self, home: str, champions: ChampionCache | None):
        self.directory = Path(home) / METRICS_DIR
        self.champions = champions

    def metrics(self) -> bytes:
        text, own = merge_textfiles(self.directory)
        text += own.text()
        if self.champions is not None:
            text += self.champions.families().text()
        return text.encode()

    def health(self) -> dict:
        registry = None
        if self.champions is not None:
            registry = {None: "not read yet", True: "ok", False: "failing"}[self.champions.up]
        return {"status": "ok", "metrics_dir_exists": self.directory.is_dir(), "registry": registry}


def make_handler(exporter: Exporter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "loopline-exporter"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, exporter.metrics(), CONTENT_TYPE)
            elif path in ("/health", "/ping"):
                self._send(200, json.dumps(exporter.health()).encode(), "application/json")
            else:
                self._send(404, b"not found: try /metrics or /health\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes every 15 s: not worth a log line
            log.debug(format, *args)

    return Handler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from loopline.config import default_home

    p = argparse.ArgumentParser(
        prog="python -m loopline.monitoring.exporter",
        description="Serve $LOOPLINE_HOME/metrics/*.prom and the registry's @champion versions for Prometheus.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--home", default=default_home(), help="LOOPLINE_HOME (default $LOOPLINE_HOME or ./.loopline)"
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument(
        "--registry-seconds",
        type=float,
        default=REGISTRY_REFRESH_SECONDS,
        help="how often the @champion versions are read (0: never read the registry)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # a scraper needs fresh-enough answers, not MLflow's minutes of retries against a registry that is down
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    champions = None
    if args.registry_seconds > 0:
        from loopline.packaging.registry import default_tracking_uri

        champions = ChampionCache(args.tracking_uri or default_tracking_uri(args.home), args.registry_seconds)
        champions.start()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Exporter(args.home, champions)))
    server.daemon_threads = True
    log.info(
        "serving %s/%s/*.prom on http://%s:%d/metrics", args.home, METRICS_DIR, args.host, server.server_port
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
