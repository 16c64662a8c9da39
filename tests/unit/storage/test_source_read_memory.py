"""Reading a Parquet source in chunks holds about one row group at a time, not the file read so far.

pyarrow's `iter_batches` with pre-buffering (its default) kept every row group's bytes until the reader
ended: reading the 10M-row demo source (4.9 GB) through `sources.read_tables` peaked +1 GB of RSS per 2M
rows. Measured with this test's file (~480 MB in 12 row groups): +205 MiB without pre-buffering, +613 MiB
with it (and +243 vs +1086 MiB for twice the file)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_READ = """
import sys, pyarrow as pa, pyarrow.parquet as pq
from loopline.storage import sources
path = sys.argv[1]
col = pa.array([("%08d" % i) * 12 for i in range(100_000)], pa.string())  # ~10 MB a column
group = pa.table({f"c{i}": col for i in range(4)})
with pq.ParquetWriter(path, group.schema, compression="none") as w:
    for _ in range(12):  # 12 row groups of ~40 MB: a ~480 MB file
        w.write_table(group)
del col, group
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) // 1024
before = hwm()
src = sources.SourceFile(uri=path, local_path=path, fmt="parquet")
rows = sum(t.num_rows for t in sources.read_tables(src, ["c0", "c1", "c2", "c3"], 100_000))
assert rows == 1_200_000
print(hwm() - before)
"""


def test_reading_a_parquet_source_holds_about_one_row_group(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _READ, str(tmp_path / "s.parquet")], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 400, f"reading the source grew RSS by {growth} MiB (the file is ~480 MiB)"
