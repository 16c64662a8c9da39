"""Model serving: MLflow's scoring protocol with dynamic batching, zero-downtime champion swaps, a
weighted/sticky challenger split, Prometheus metrics and a Delta inference log.

`run_server(model, cfg, tracking_uri=..., home=...)` is what `loopline serve` calls. The serving process
never imports prefect or great_expectations, and imports MLflow only to resolve and download versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loopline.config import ServingConfig

__all__ = ["RELOAD_TOKEN_ENV", "run_server"]

# the environment variable holding the token `POST /reload` requires; the deploy stage sets it for servers it starts
RELOAD_TOKEN_ENV = "LOOPLINE_RELOAD_TOKEN"


def run_server(model: str, cfg: ServingConfig, *, tracking_uri: str | None, home: str) -> None:
    """Serve `models:/<model>@champion` on cfg.host:cfg.port until SIGTERM/SIGINT (blocking)."""
    from loopline.serving.server import run_server as _run

    _run(model, cfg, tracking_uri=tracking_uri, home=home)
