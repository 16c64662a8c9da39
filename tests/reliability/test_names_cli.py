"""Hostile dataset and model names through the real `loopline` command: `../` (and, in full rounds, the
other shapes that leave a folder) are refused with exit 2 and one paragraph that names the name and the
allowed pattern; nothing is written anywhere."""

from __future__ import annotations

import json

import pytest

from loopline.storage.names import NAME_PATTERN
from tests.cli_support import run_cli
from tests.reliability.conftest import rounds

pytestmark = pytest.mark.integration

# (what, command line): a dataset name reaches lake paths through `status` (no Prefect) and `features`,
# a model name through `train` (checkpoints/M) and `drift` (predictions/M)
ATTACKS = [
    ("dataset", ["status", "--dataset", "../evil"]),
    ("model", ["train", "--dataset", "demo", "--model", "../evil"]),
    ("dataset", ["features", "--dataset", "../../evil"]),
    ("model", ["drift", "--model", "../evil"]),
    ("dataset", ["status", "--dataset", ".."]),
    ("dataset", ["status", "--dataset", "a/../../b"]),
    ("model", ["train", "--dataset", "demo", "--model", "..\\evil"]),
    ("dataset", ["status", "--dataset", ".hidden"]),
]


def test_dot_dot_names_are_refused_through_the_cli(prefect_api, home, tmp_path, reliability_report):
    attacks = ATTACKS[: rounds(2, len(ATTACKS))]
    refused = 0
    for what, args in attacks:
        name = args[args.index(f"--{what}") + 1]
        done = run_cli(*args, "--json", home=home)
        assert done.returncode == 2, (args, done.stdout[-2000:], done.stderr[-2000:])
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["type"] == "InvalidNameError", (args, out)
        assert f"invalid {what} name {name!r}" in out["error"] and NAME_PATTERN in out["error"]
        assert "Traceback" not in done.stderr
        refused += 1
    escaped = [p for p in tmp_path.rglob("*") if "evil" in p.name or p.name == "b"]
    reliability_report.add(
        "../ in dataset/model names (CLI)",
        tries=len(attacks),
        note=f"refused with exit 2: {refused} of {len(attacks)}; paths written: {len(escaped)}",
    )
    assert escaped == []
