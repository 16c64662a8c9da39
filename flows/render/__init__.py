"""The human face of each CLI command's result: a short summary, tables drawn with rich.

`show(command, result, **context)` prints it to stdout. `--json` never comes here: its one JSON line is the
machine's face and stays as it is. A renderer reads the same dict the JSON shows, tolerates missing keys
(older results, skipped stages) and never fails the command: on a surprise it prints the dict compactly.
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from flows.render.data import render_features, render_ingest
from flows.render.lake import render_maintenance
from flows.render.models import render_evaluate, render_promote, render_rollback, render_train
from flows.render.monitoring import render_drift, render_status
from flows.render.parts import Renderer, console
from flows.render.platform import render_down, render_init, render_run, render_up


def show(command: str, result: Any, *, file: Any = None, **context: Any) -> None:
    out = console(file)
    try:
        items = list(RENDERERS[command](result, **context))
    except Exception as exc:  # a summary must never turn a finished command into a failure
        items = [
            Text(f"({command}: no summary for this result: {type(exc).__name__}: {exc})", style="dim"),
            json.dumps(result, default=str, sort_keys=True),
        ]
    for item in items:
        if isinstance(item, str | Text):
            out.print(item, soft_wrap=True)  # paths and messages stay on one line
        else:
            out.print(item)


RENDERERS: dict[str, Renderer] = {
    "ingest": render_ingest,
    "features": render_features,
    "train": render_train,
    "evaluate": render_evaluate,
    "promote": render_promote,
    "rollback": render_rollback,
    "drift": render_drift,
    "status": render_status,
    "run": render_run,
    "up": render_up,
    "down": render_down,
    "init": render_init,
    "maintenance": render_maintenance,
}
