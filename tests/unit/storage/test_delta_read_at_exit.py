"""A process that reads a local Delta table just before it exits ends cleanly. Through deltalake's default
(Python-implemented) filesystem it aborted about one run in three here ("terminate called without an
active exception", apache/arrow#39862): `loopline status` exited 134 after printing its result."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from loopline.storage import delta
from loopline.storage.lake import Lake

REPO = Path(__file__).resolve().parents[3]
RUNS = 8  # at the old rate, 8 clean runs in a row would happen about 3% of the time


def test_reading_a_table_then_exiting_never_aborts(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("clean", "t")
    delta.append_once(lake, uri, pa.table({"id": list(range(1000)), "x": [0.5] * 1000}), app_id="a")
    code = (
        "import sys; from loopline.storage import delta; from loopline.storage.lake import Lake\n"
        f"t = delta.read_column(Lake(root={str(tmp_path / 'lake')!r}), {uri!r}, ['id', 'x'])\n"
        "assert t.num_rows == 1000"
    )
    codes = [
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True).returncode
        for _ in range(RUNS)
    ]
    assert codes == [0] * RUNS
