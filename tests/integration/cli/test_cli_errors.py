"""A bad-input corpus through the real CLI (`python -m flows.cli`, the session's Prefect server): a garbage
binary file, an empty file, a wrong delimiter, a broken contract, an unknown dataset, an unknown model.
Each prints one paragraph naming the file or field, with the documented exit code, and no traceback
(neither ours nor Prefect's task/flow failure lines). A good ingest ends with a table, not a JSON dump;
`--json` still ends with one JSON line.

The dataset is the test's own (parcels, with its own contract), not the demo. The cases run three at a
time, each in its own LOOPLINE_HOME, to keep the file near 30 s."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.cli_support import run_cli as cli

REPO = Path(__file__).resolve().parents[3]

CONTRACT = {
    "dataset": "parcels",
    "id": "parcel_id",
    "label": "late",
    "task": "binary",
    "columns": {
        "parcel_id": {"type": "int", "min": 0},
        "weight_kg": {"type": "float", "min": 0},
        "zone": {"type": "category", "values": ["north", "south"]},
        "late": {"type": "int", "values": [0, 1]},
    },
}
ROWS = [(i, round(0.5 + (i * 7919 % 100) / 10, 2), "north" if i % 3 else "south", i % 2) for i in range(40)]
NO_TRACE = ("Traceback", "Encountered exception", "Finished in state Failed")


def write_corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "contract": root / "parcels.yaml",
        "broken": root / "broken.yaml",
        "good": root / "parcels.csv",
        "garbage": root / "garbage.csv",
        "empty": root / "empty.csv",
        "semicolons": root / "semicolons.csv",
    }
    files["contract"].write_text(yaml.safe_dump(CONTRACT, sort_keys=False))
    broken = {**CONTRACT, "columns": {**CONTRACT["columns"], "weight_kg": {"type": "decimal"}}}
    files["broken"].write_text(yaml.safe_dump(broken, sort_keys=False))
    lines = ["parcel_id,weight_kg,zone,late", *(",".join(map(str, r)) for r in ROWS)]
    files["good"].write_text("\n".join(lines) + "\n")
    files["semicolons"].write_text("\n".join(line.replace(",", ";") for line in lines) + "\n")
    files["garbage"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 8)  # an image, not text
    files["empty"].write_bytes(b"")
    return files


# case -> (argv with {file} placeholders, exit code, what stderr must name)
BAD = {
    "garbage binary file": (
        ["ingest", "--contract", "{contract}", "--source", "{garbage}"],
        2,
        ["garbage.csv"],
    ),
    "empty file": (["ingest", "--contract", "{contract}", "--source", "{empty}"], 2, ["empty.csv", "empty"]),
    "wrong delimiter": (
        ["ingest", "--contract", "{contract}", "--source", "{semicolons}"],
        3,
        ["semicolons.csv", "weight_kg", "rejected"],
    ),
    "broken contract": (
        ["ingest", "--contract", "{broken}", "--source", "{good}"],
        2,
        ["broken.yaml", "weight_kg"],
    ),
    "unknown dataset": (["features", "--dataset", "nope"], 2, ["'nope'", "ingest"]),
    "unknown model": (["drift", "--model", "nope"], 2, ["'nope'", "registry"]),
}


@pytest.fixture(scope="module")
def runs(prefect_api, tmp_path_factory):
    """Every case, three at a time: {case: CompletedProcess}; "good" is a list (human, then --json)."""
    root = tmp_path_factory.mktemp("cli-errors")
    files = {k: str(v) for k, v in write_corpus(root / "files").items()}

    def bad(case: str):
        argv, _, _ = BAD[case]
        return cli(*(a.format(**files) for a in argv), home=root / case.replace(" ", "-"))

    def good():
        home = root / "good"
        ingest = ["ingest", "--contract", files["contract"], "--source", files["good"]]
        return [cli(*ingest, home=home), cli(*ingest, "--json", home=home), cli("status", home=home)]

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case: pool.submit(bad, case) for case in BAD}
        futures["good"] = pool.submit(good)
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_prints_one_paragraph_with_the_exit_code(runs, case):
    _, code, names = BAD[case]
    res = runs[case]
    assert res.returncode == code, f"{case}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    error = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, res.stderr
    for name in names:
        assert name in error[0], f"{case}: {name!r} not named in {error[0]!r}"
    for noise in NO_TRACE:
        assert noise not in res.stderr and noise not in res.stdout, f"{case}: {noise!r} in\n{res.stderr}"
    assert res.stderr.strip().splitlines()[-1] == error[0]  # the paragraph is the last thing said


def test_a_rejected_batch_shows_its_table_then_the_reason(runs):
    res = runs["wrong delimiter"]
    assert "rows in" in res.stdout and "rejected" in res.stdout and "semicolons.csv" in res.stdout
    assert "WARNING" not in res.stderr  # the gate's warning is the error paragraph, said once
    assert res.stderr.count("semicolons.csv") == 1, (
        res.stderr
    )  # the file named once, not before its reason too


def test_a_good_command_ends_with_a_table_and_json_is_unchanged(runs):
    human, as_json, status = runs["good"]
    assert human.returncode == 0, human.stderr
    assert "ingest parcels from" in human.stdout and "accepted" in human.stdout
    header = next(line for line in human.stdout.splitlines() if "rows in" in line)
    assert "quarantined" in header and "─" in human.stdout
    assert not human.stdout.lstrip().startswith("{") and '"rows_in"' not in human.stdout
    assert human.stderr.strip() == "", human.stderr  # no third-party chatter, no warnings

    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert out["dataset"] == "parcels" and out["duplicate_batch"] is True and out["rows_in"] == len(ROWS)

    assert status.returncode == 0, status.stderr
    assert "parcels" in status.stdout and "1 ok, 0 rejected" in status.stdout
    assert not status.stdout.lstrip().startswith("{")
