"""kill -9 during a promotion, then the promotion is run again: exactly one champion, and the history (the
registered-model tags `loopline.history.*`) agrees with the aliases.

Each round: a fresh registered model whose v1 is champion (promoted by loopline) and whose v2 is a copy of
it (a lateral move is allowed, so v2 always wins). A child process promotes v2 with `LOOPLINE_KILL_AT` set to
one of the kill points on the alias path (loopline.release.champion.move_champion, loopline.release.promotion)
and dies there by SIGKILL; the flock it held dies with it. Then the same promotion runs again here, and the
registry must be whole: `@champion` = v2 = the last history entry's champion, `@previous` = v1 = the entry
before it in the chain, sequence numbers without gaps, every move starting where the previous one ended, and
the recorded chain equal to the replay of the moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import rounds
from tests.reliability.registry_support import clone, promote, trained_registry

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# the most harmful first: between the two alias writes, then between the aliases and the record
KILL_POINTS = (
    "champion.after_alias",
    "champion.before_history",
    "champion.before_alias",
    "promote.before_record",
    "promote.after_record",
)
CHILD = """
import sys
from loopline.config import LifecycleConfig
from loopline.release import promote
from loopline.storage.lake import Lake

cfg = LifecycleConfig.model_validate_json(sys.argv[1])
promote(cfg, sys.argv[2], 2, lake=Lake(root=sys.argv[3]), tracking_uri=sys.argv[4], infra_validate=False)
print("promotion finished: the kill point was never reached")
"""


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return trained_registry(tmp_path_factory)


def check_consistent(client, name: str) -> list[str]:
    """What is wrong with the champion state of `name` (empty when it is whole)."""
    from loopline.release.champion import read_history, replay

    problems = []
    aliases = {k: int(v) for k, v in client.get_registered_model(name).aliases.items()}
    history = read_history(client, name)
    if aliases.get("champion") != 2 or not history or history[-1]["champion"] != 2:
        problems.append(f"champion: aliases {aliases}, last entry {history[-1] if history else None}")
    if [e["seq"] for e in history] != list(range(1, len(history) + 1)):
        problems.append(f"sequence numbers {[e['seq'] for e in history]}")
    if [e["from"] for e in history] != [None] + [e["champion"] for e in history[:-1]]:
        problems.append(f"moves that do not start where the last one ended: {history}")
    if history and (replay(history) != history[-1]["stack"] or history[-1]["stack"] != [1, 2]):
        problems.append(f"chain {history[-1]['stack']} vs replay {replay(history)}")
    if aliases.get("previous") != 1:
        problems.append(f"@previous is {aliases.get('previous')}, the chain says 1")
    return problems


def test_kill_9_during_promote_then_rerun(reg, reliability_report):
    tries, problems = 0, []
    for point in KILL_POINTS[: rounds(2, 5)]:
        name = clone(reg, copies=2, prefix="kill")
        assert promote(reg, name, 1, infra_validate=False)["promoted"]
        env = {**os.environ, "LOOPLINE_KILL_AT": point, "MLFLOW_TRACKING_URI": reg["tracking"]}
        env["LOOPLINE_HOME"] = str(reg["home"])
        args = [reg["cfg"].model_dump_json(), name, reg["lake"].root, reg["tracking"]]
        child = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        tries += 1
        assert child.returncode == -9, (
            f"{point}: exit {child.returncode}: {child.stdout[-500:]}{child.stderr[-2000:]}"
        )

        again = promote(reg, name, 2, infra_validate=False)  # the rerun
        assert again["champion_version"] == 2, (point, again["reason"])
        problems += [f"{point}: {p}" for p in check_consistent(reg["client"], name)]
    reliability_report.add(
        "kill -9 during promote, then rerun",
        tries=tries,
        note=f"kill points: {', '.join(KILL_POINTS[:tries])}; inconsistent states: {len(problems)}",
    )
    assert not problems, json.dumps(problems, indent=1)
