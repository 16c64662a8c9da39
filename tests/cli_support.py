"""The real `loopline` command in a subprocess, as users run it, against a given LOOPLINE_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# a model small enough for a test: a few steps, a narrow MLP, a short bootstrap, no slice gate
TINY = [
    "--set", "training.max_steps=30",
    "--set", "training.hidden_sizes=[16]",
    "--set", "training.eval_every_steps=10",
    "--set", "evaluation.bootstrap_samples=50",
    "--set", "evaluation.max_slice_regression=null",
]  # fmt: skip


def run_cli(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOOPLINE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    env.pop("LOOPLINE_LAKE_URI", None)
    env.pop("LOOPLINE_VERBOSE", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )


def deploy_env(api_url: str, home: Path | str | None = None) -> dict[str, str]:
    """The environment `prefect deploy` of prefect.yaml needs (flows/project.py): the API and the variables its
    `{{ $VAR }}` placeholders name."""
    import tempfile

    landing = Path(home or tempfile.gettempdir()) / "landing"
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "LOOPLINE_PROJECT_DIR": str(REPO),
        "LOOPLINE_LANDING": str(landing),
    }
