"""Checkpoints in the lake: `checkpoints/M/<run_key>/step-XXXXXXXX.pt`, atomic, last K kept.

A checkpoint is one dict (model, optimizer, scheduler, step, epoch, data-order position, every RNG
state, best metric, config, data versions) serialised with `torch.save` and written whole through
`Lake.put_bytes` (temp file + fsync + rename locally; one PUT on S3), so a reader sees either the old
set of files or the new one, never half a file. Loading uses `weights_only=True`. A latest file that
does not load (a crash mid-write on a filesystem without atomic rename, a truncated upload, disk
corruption) is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loopline.faults import kill_point
from loopline.storage.files import atomic_writer
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

_STEP_FILE = re.compile(r"step-(\d{8,})\.pt$")
# Keys every checkpoint has; a file without them is treated as corrupt.
REQUIRED_KEYS = ("format", "model", "optimizer", "step", "rng")
FORMAT = 1


@dataclass(frozen=True)
class LoadedCheckpoint:
    uri: str
    step: int
    state: dict[str, Any]


class CheckpointStore:
    """The checkpoint folder of one run (one run key)."""

    def __init__(self, lake: Lake, prefix_uri: str, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        self.lake = lake
        self.prefix_uri = prefix_uri.rstrip("/")
        self.keep_last = keep_last
        self.last_write_seconds: float | None = None

    def uri_for(self, step: int) -> str:
        return f"{self.prefix_uri}/step-{step:08d}.pt"

    def list_steps(self) -> list[tuple[int, str]]:
        """(step, uri) of every checkpoint file, oldest first."""
        found = []
        for uri in self.lake.list(self.prefix_uri):
            match = _STEP_FILE.search(uri.rsplit("/", 1)[-1])
            if match:
                found.append((int(match.group(1)), uri))
        return sorted(found)

    def save(self, state: dict[str, Any]) -> str:
        """Write `state` (must carry `step`) atomically, then drop all but the newest `keep_last`."""
        started = time.perf_counter()
        payload = {"format": FORMAT, **state}
        uri = self.uri_for(int(state["step"]))
        if self.lake.is_s3:
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            self.lake.put_bytes(uri, buffer.getvalue())  # one PUT: S3 objects appear whole or not at all
        else:
            _save_local_atomically(payload, Path(uri))
        kill_point("checkpoint.after_rename")  # the new file is in place, the old ones not yet pruned
        self.last_write_seconds = time.perf_counter() - started
        self.prune()
        return uri

    def prune(self) -> None:
        steps = self.list_steps()
        for _, uri in steps[: max(0, len(steps) - self.keep_last)]:
            self.lake.delete(uri)

    def load(self, uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load one checkpoint; raises ValueError naming the file when it is unreadable or incomplete."""
        try:
            if self.lake.is_s3:
                source = io.BytesIO(self.lake.get_bytes(uri))
            else:
                source = uri  # torch reads the zip in place: no second copy of a large state in memory
            state = torch.load(source, map_location=map_location, weights_only=True)
        except Exception as exc:  # a truncated zip raises RuntimeError, a bad pickle UnpicklingError, ...
            raise ValueError(f"checkpoint {uri} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"checkpoint {uri} is incomplete: missing {missing}")
        return state

    def load_latest(self, map_location: str | torch.device = "cpu") -> LoadedCheckpoint | None:
        """The newest checkpoint that loads; older ones are tried when newer ones are corrupt."""
        for step, uri in reversed(self.list_steps()):
            try:
                state = self.load(uri, map_location=map_location)
            except ValueError as exc:
                log.warning("%s; falling back to the previous checkpoint", exc)
                continue
            return LoadedCheckpoint(uri=uri, step=step, state=state)
        return None

    def remove_stale_temp_files(self) -> int:
        """Delete temp files a killed writer left behind (local lakes; an S3 PUT leaves none)."""
        if self.lake.is_s3:
            return 0
        folder = Path(self.prefix_uri)
        stale = list(folder.glob(".step-*.pt.tmp-*")) if folder.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def clear(self) -> int:
        """Delete every checkpoint of this run (`--fresh`). Returns how many were deleted."""
        steps = self.list_steps()
        for _, uri in steps:
            self.lake.delete(uri)
        return len(steps)


def _save_local_atomically(payload: dict[str, Any], path: Path) -> None:
    """torch.save streamed into a temp file (no second in-memory copy of a large state), fsync, rename."""
    with atomic_writer(path, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()  # the whole temp file is written (atomic_writer's own flush is then a no-op) ...
        kill_point("checkpoint.before_rename")  # ... and not yet renamed: only the temp file exists
