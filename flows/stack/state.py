"""The stack's record: $LOOPLINE_HOME/stack.json, which `up` writes and `down` (and every later
`loopline` command) reads, and the error a stack process that does not start or answer raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopline.errors import ConfigError, LooplineError
from loopline.storage.files import atomic_write_text

PROJECT_DIR = Path(__file__).resolve().parents[2]  # the checkout: prefect.yaml, infra/, flows/
STACK_FILE = "stack.json"


class StackError(LooplineError):
    """A stack process did not start or answer; the message names its log file."""

    exit_code = 1


def read_stack(home: str | Path) -> dict[str, Any] | None:
    """The stack.json `up` wrote for this home, or None."""
    path = Path(home) / STACK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); remove it and run `loopline up` again") from exc


def write_stack(root: Path, state: dict[str, Any]) -> None:
    """Replace stack.json atomically: a `down` or a CLI command never reads half of it."""
    atomic_write_text(root / STACK_FILE, json.dumps(state, indent=2, sort_keys=True))
