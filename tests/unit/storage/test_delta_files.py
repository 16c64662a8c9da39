"""Delta appends written by pyarrow and committed as add actions (loopline.storage.delta_files): the same
table, app transactions, conflicts and statistics as delta-rs's own write, in memory that does not grow with
the commit's rows."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake.exceptions import CommitFailedError

from loopline.storage import delta, delta_files
from loopline.storage.lake import Lake

REPO = Path(__file__).resolve().parents[3]
OPTIONS = {"compression": "snappy", "use_dictionary": ["b"], "write_statistics": ["b", "row"]}


def rows(start: int, n: int) -> pa.Table:
    return pa.table(
        {
            "text": pa.array([f"value {i}" for i in range(start, start + n)], pa.string()),
            "b": pa.array(["batch-" + str(start)] * n, pa.string()),
            "row": pa.array(range(start, start + n), pa.int64()),
        }
    )


def adds(uri: str) -> list[dict]:
    """The add actions of the table's log, as written."""
    out = []
    for commit in sorted((Path(uri) / "_delta_log").glob("*.json")):
        out += [json.loads(line)["add"] for line in commit.read_text().splitlines() if '"add"' in line]
    return out


def test_files_commit_creates_then_appends_once_with_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(delta_files, "FILE_BYTES", 1)  # a file per batch: several add actions per commit
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("raw", "t")
    first = rows(0, 1000)
    assert delta.append_once(
        lake, uri, first.to_reader(max_chunksize=400), app_id="a", metadata={"k": 1}, parquet_options=OPTIONS
    ) == (0, True)
    second = rows(1000, 500)
    assert delta.append_once(
        lake, uri, second.to_reader(max_chunksize=250), app_id="b", parquet_options=OPTIONS
    ) == (1, True)
    assert delta.append_once(lake, uri, second, app_id="b", parquet_options=OPTIONS) == (1, False)

    table = delta.open_table(lake, uri)
    assert table.transaction_version("a") == 1 and table.transaction_version("b") == 1
    assert table.history()[-1]["k"] == "1"
    assert table.schema().to_arrow() == delta.open_table(lake, uri).schema().to_arrow()
    got = delta.dataset(table).to_table().sort_by("row")
    assert got.equals(pa.concat_tables([first, second]))
    actions = adds(uri)
    assert len(actions) == 5  # 400 + 400 + 200, then 250 + 250 (delta-rs would write one file a commit)
    stats = sorted((json.loads(a["stats"]) for a in actions), key=lambda s: s["minValues"]["row"])
    assert [s["numRecords"] for s in stats] == [400, 400, 200, 250, 250]
    assert [(s["minValues"]["row"], s["maxValues"]["row"]) for s in stats][:2] == [(0, 399), (400, 799)]
    assert stats[3]["minValues"]["b"] == "batch-1000" and stats[0]["nullCount"]["text"] == 0
    assert "text" not in stats[0]["minValues"]  # no statistics asked for it
    # a reader's filter on _row-like columns skips files by those statistics
    fragments = list(delta.dataset(table).get_fragments(filter=pc.field("row") >= 1000))
    assert len(fragments) == 2  # of 5: the others are skipped by their add actions' min/max


def test_float_columns_get_min_max_unless_an_extreme_is_not_finite(tmp_path):
    """clean/D and features/D go through this path too: their float columns keep the min/max delta-rs wrote
    (readers skip files by them); JSON has no NaN or infinity, so such a column gets none, not a wrong one."""
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("clean", "t")
    table = pa.table(
        {
            "x": pa.array([2.5, float("nan"), -1.0, None]),
            "inf": pa.array([1.0, float("inf"), 0.0, 2.0]),
            "allnan": pa.array([float("nan")] * 4),
        }
    )
    delta.append_once(lake, uri, table, app_id="a", parquet_options={"write_statistics": True})
    (stats,) = [json.loads(a["stats"]) for a in adds(uri)]
    assert (stats["minValues"]["x"], stats["maxValues"]["x"]) == (-1.0, 2.5)  # NaN skipped, as delta-rs does
    assert "inf" not in stats["minValues"] and "allnan" not in stats["maxValues"]
    assert stats["nullCount"] == {"x": 1, "inf": 0, "allnan": 0}
    fragments = list(delta.dataset(delta.open_table(lake, uri)).get_fragments(filter=pc.field("x") > 3.0))
    assert fragments == []


def test_files_commit_from_a_stale_snapshot_conflicts(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("raw", "t")
    delta.append_once(lake, uri, rows(0, 10), app_id="a", writer="w", parquet_options=OPTIONS)
    stale = delta.open_table(lake, uri)
    delta.append_once(lake, uri, rows(10, 10), app_id="b", writer="w", parquet_options=OPTIONS)
    # the same unit of work committed since the snapshot: the conflict is a skip, nothing is added twice
    again = rows(10, 10).to_reader()
    assert delta.append_once(lake, uri, again, app_id="b", table=stale, parquet_options=OPTIONS) == (1, False)
    # another unit of work, but the table's writer id moved on since the snapshot: raised for a re-read
    with pytest.raises(CommitFailedError):
        delta.append_once(
            lake, uri, rows(20, 10).to_reader(), app_id="c", table=stale, writer="w", parquet_options=OPTIONS
        )
    table = delta.open_table(lake, uri)
    assert table.version() == 1 and table.transaction_version("w") == 2
    assert delta.read_column(lake, uri, ["row"]).num_rows == 20


def test_first_commit_lost_race_raises_commit_failed(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("raw", "t")
    delta.append_once(lake, uri, rows(0, 10), app_id="a", parquet_options=OPTIONS)
    with pytest.raises(CommitFailedError):  # another writer created the table after our "no table" read
        delta.append_once(
            lake, uri, rows(10, 10).to_reader(), app_id="b", table=None, parquet_options=OPTIONS
        )


def test_a_schema_change_goes_through_delta_rs_merge(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("raw", "t")
    delta.append_once(lake, uri, rows(0, 10), app_id="a", parquet_options=OPTIONS)
    wider = rows(10, 5).append_column("new", pa.array(["x"] * 5))
    assert delta.append_once(lake, uri, wider, app_id="b", parquet_options=OPTIONS) == (1, True)
    got = delta.read_column(lake, uri, ["row", "new"]).sort_by("row")
    assert got["new"].to_pylist() == [None] * 10 + ["x"] * 5


_PEAK = """
import sys, pyarrow as pa
from loopline.storage import delta
from loopline.storage.lake import Lake
text = pa.array([("%08d" % i) * 12 for i in range(50_000)], pa.string())  # ~5 MB of text a column
batch = pa.record_batch([text] * 8 + [pa.array(range(50_000), pa.int64())],
                        names=[f"c{i}" for i in range(8)] + ["row"])
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) // 1024
n, folder = int(sys.argv[1]), sys.argv[2]
before = hwm()
reader = pa.RecordBatchReader.from_batches(batch.schema, (batch for _ in range(n)))
opts = {"compression": "snappy", "use_dictionary": False, "write_statistics": ["row"]}
delta.append_once(Lake(root=folder), folder + "/t", reader, app_id="a", parquet_options=opts)
print(hwm() - before)
"""


def test_peak_memory_does_not_grow_with_the_commits_rows(tmp_path):
    """8 vs 48 batches of ~40 MB of text into one commit, each in a fresh process: the peak grows by less
    than two batches' worth (delta-rs's streaming write grew by about 0.45 GB per million demo rows)."""

    def peak(n: int) -> int:
        folder = tmp_path / str(n)
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(n), str(folder)], cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak(8), peak(48)
    assert large - small < 80, (small, large)
    assert json.dumps({"small": small, "large": large})


@pytest.mark.parametrize(
    "options", [{"compression": "snappy"}, None], ids=["pyarrow-files", "delta-rs-writer"]
)
def test_a_wide_table_keeps_batch_statistics_in_its_log(tmp_path, options):
    """Delta keeps min/max of the first 32 columns only: a table of 40 contract columns (quoted names too)
    gets its batch column's statistics all the same, so the batches come from the log, and a file holding
    two batches (or a null) makes `distinct_from_log` answer None (read the column) instead of guessing."""
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.uri("clean", "wide")
    names = ["petal length (cm)", "a,b", "we`ird"] + [f"c{i:02d}" for i in range(37)]
    assert len(names) == 40

    def batch(ids: list[str]) -> pa.Table:
        n = len(ids)
        return pa.table({**{k: pa.array([1.5] * n) for k in names}, "_batch_id": pa.array(ids, pa.string())})

    delta.append_once(lake, uri, batch(["b1"] * 3), app_id="1", parquet_options=options)
    delta.append_once(lake, uri, batch(["b2"] * 2), app_id="2", parquet_options=options)
    table = delta.open_table(lake, uri)
    assert "`a,b`" in table.metadata().configuration["delta.dataSkippingStatsColumns"]
    assert sorted(delta.distinct_from_log(table, "_batch_id")) == ["b1", "b2"]
    assert delta.distinct_from_log(table, "c39") is None  # past the 32 columns and not batch metadata
    delta.append_once(lake, uri, batch(["b3", "b4"]), app_id="3", parquet_options=options)
    assert delta.distinct_from_log(delta.open_table(lake, uri), "_batch_id") is None
    narrow = lake.uri("clean", "narrow")  # the metadata within the first 32 columns: Delta's defaults
    delta.append_once(lake, narrow, rows(0, 3), app_id="1", parquet_options=options)
    assert "delta.dataSkippingStatsColumns" not in delta.open_table(lake, narrow).metadata().configuration
