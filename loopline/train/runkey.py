"""Run identity: the code version and the run key that decide whether a second attempt resumes.

run_key = hash(dataset, model name, features version, training config, code version). Any attempt with
the same key (a Prefect task retry, a flow retry, a rerun of the deployment, `loopline train` after a
crash) finds the same checkpoint folder and resumes. Settings that change how a run is operated but not
what it computes (checkpoint cadence, logging, spot notice, prices) are left out of the key, so changing
them does not throw work away. Where a run executes is left out too (`nodes`, `devices`, the rendezvous
settings, the launcher): the same key on another world size finds the run's checkpoints and is refused with a
clear error (loopline.train.topology.WorldSizeChanged) instead of silently starting over, and the nodes of
one run, which differ in rank and environment, agree on the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

from loopline.config import TrainingConfig

# Fields that do not change the numbers a run produces.
OPERATIONAL_FIELDS = frozenset(
    {
        "checkpoint_every_steps",
        "checkpoint_every_seconds",
        "keep_last_checkpoints",
        "log_every_steps",
        "spot_notice_url",
        "spot_notice_file",
        "spot_poll_seconds",
        "gpu_price_per_hour",
        "gpu_sample_seconds",
        "gpu_slot",
        "gpu_slot_on_cpu",
        "gpu_slot_timeout_seconds",
        # where the run executes (see the module docstring)
        "devices",
        "nodes",
        "node_rank",
        "rdzv_endpoint",
        "rdzv_timeout_seconds",
        "rdzv_join_timeout_seconds",
        "launcher",
    }
)

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # loopline/


def code_version() -> str:
    """`LOOPLINE_CODE_VERSION` if set (a deployment pins it, e.g. to an image tag); else the git commit,
    with `+dirty.<hash>` when loopline/ has uncommitted changes; else `<package version>+<source hash>`."""
    pinned = os.environ.get("LOOPLINE_CODE_VERSION")
    if pinned:
        return pinned
    return _code_version_uncached()


@functools.lru_cache(maxsize=1)
def _code_version_uncached() -> str:
    commit = _git(["rev-parse", "HEAD"])
    if commit:
        dirty = _git(["status", "--porcelain", "--", str(_PACKAGE_DIR)])
        return f"{commit[:12]}+dirty.{source_hash()}" if dirty else commit[:12]
    return f"{_package_version()}+{source_hash()}"


def source_hash() -> str:
    """SHA-256 (16 hex) over the loopline/ Python sources, path and content."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def compute_run_key(
    training: TrainingConfig,
    *,
    dataset: str,
    model_name: str,
    features_version: int,
    code: str,
) -> str:
    """A short, stable hash naming one training run's identity (see module docstring)."""
    relevant = {k: v for k, v in training.model_dump(mode="json").items() if k not in OPERATIONAL_FIELDS}
    blob = json.dumps(
        {
            "dataset": dataset,
            "model_name": model_name,
            "features_version": features_version,
            "training": relevant,
            "code": code,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=_PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or ("" if args[0] == "status" else None)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loopline")
    except PackageNotFoundError:
        return "0+unknown"
