"""The reliability suite: faults, kills, races and hostile input, each recorded in one report table.

`make test` runs a few rounds of each loop; `make reliability` (LOOPLINE_RELIABILITY_FULL=1) runs the full
counts. Each test adds a row with `reliability_report.add(...)`; the table prints at the end of the session
and is written to `$LOOPLINE_RELIABILITY_REPORT` (default `.loopline/reliability.json`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

FULL = os.environ.get("LOOPLINE_RELIABILITY_FULL") == "1"


def rounds(quick: int, full: int) -> int:
    """How many times a loop repeats its fault: `quick` in `make test`, `full` in `make reliability`."""
    return full if FULL else quick


class Report:
    COLUMNS = ("fault or attack", "tries", "rows lost", "rows doubled", "unexpected 5xx", "notes")

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, fault: str, tries: int, lost: int = 0, doubled: int = 0, unexpected_5xx: int = 0, **extra):
        self.rows.append(
            {
                "fault": fault,
                "tries": tries,
                "lost": lost,
                "doubled": doubled,
                "unexpected_5xx": unexpected_5xx,
                **extra,
            }
        )

    def table(self) -> str:
        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        for r in self.rows:
            notes = r.get("note", "")
            cells = (r["fault"], r["tries"], r["lost"], r["doubled"], r["unexpected_5xx"], notes)
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines)


_REPORT = Report()


@pytest.fixture(scope="session")
def reliability_report() -> Report:
    return _REPORT


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _REPORT.rows:
        return
    terminalreporter.write_sep("=", "reliability report" + (" (full counts)" if FULL else " (quick rounds)"))
    terminalreporter.write_line(_REPORT.table())
    path = Path(os.environ.get("LOOPLINE_RELIABILITY_REPORT", ".loopline/reliability.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"full": FULL, "rows": _REPORT.rows}, indent=2))
