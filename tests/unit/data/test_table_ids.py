"""`TableIds`: the gate's look-up of a batch's ids in one snapshot of clean/D, a few ids at a time (filter
pushdown) instead of the whole id column: which ids are held and by which batch, the batch's own rows not
counting, the snapshot fixed once taken."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from loopline.data.validation.ids import TableIds
from loopline.storage import delta
from loopline.storage.lake import Lake


def rows(ids: list[int], batch: str) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "_batch_id": [batch] * len(ids)})


def test_holders_name_the_batch_and_skip_the_excluded_one(tmp_path):
    lake = Lake(root=str(tmp_path / "lake"))
    uri = lake.table_uri("clean", "t")
    delta.append_once(lake, uri, rows([1, 2, 3], "a"), app_id="a")
    delta.append_once(lake, uri, rows([10, 11], "b"), app_id="b")
    snapshot = delta.open_table(lake, uri)
    delta.append_once(lake, uri, rows([20], "c"), app_id="c")  # after the snapshot: not seen

    ids = TableIds(snapshot, "id", exclude_batch="b")
    assert ids and ids.version == snapshot.version()
    assert ids.holders([3, 10, 20, 99]) == {3: "a"}
    assert ids.contains(np.array([3, 10, 20, 1], dtype=np.int64)).tolist() == [True, False, False, True]
    assert TableIds(snapshot, "id").holders(pa.array([10, None], pa.int64())) == {10: "b"}
    assert ids.holders([]) == {} and not ids.contains(np.array([], dtype=np.int64)).any()
    empty = TableIds(None, "id")
    assert not empty and empty.holders([1]) == {} and empty.version is None
