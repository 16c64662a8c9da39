"""A Delta table's snapshot read one data file at a time: the unit of per-partition work on a cluster.

The committer lists the files of a snapshot (`snapshot_files`, in the order a single process reads them); a
worker opens the same snapshot (pinned version) and reads one of them with the snapshot's schema (a column a
file predates reads as nulls, as through the whole table). Paths are the snapshot's own pyarrow-dataset paths,
so committer and workers name files alike, locally and on S3.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from loopline.storage import delta
from loopline.storage.lake import Lake


def snapshot_files(dataset: pads.Dataset, flt: pc.Expression | None = None) -> list[str]:
    """The data files of a snapshot's dataset that may hold rows matching `flt`, in read order."""
    fragments = dataset.get_fragments() if flt is None else dataset.get_fragments(filter=flt)
    return [f.path for f in fragments]


def open_file(lake: Lake, uri: str, version: int, path: str) -> pads.Dataset:
    """One data file of the table at `version`, as a dataset with the snapshot's schema."""
    table = delta.open_table(lake, uri, version)
    if table is None:
        raise FileNotFoundError(f"no Delta table at {uri}")
    full = delta.dataset(table)
    fragment = next((f for f in full.get_fragments() if f.path == path), None)
    if fragment is None:
        raise FileNotFoundError(f"{path} is not a data file of {uri} at version {version}")
    return pads.FileSystemDataset([fragment], full.schema, fragment.format, fragment.filesystem)


def read_file(
    lake: Lake,
    uri: str,
    version: int,
    path: str,
    *,
    columns: list[str] | dict | None = None,
    flt: pc.Expression | None = None,
    batch_rows: int = 250_000,
) -> Iterator[pa.RecordBatch]:
    """The non-empty record batches of one data file of the snapshot (filtered, projected)."""
    for rb in open_file(lake, uri, version, path).to_batches(
        columns=columns, filter=flt, batch_size=batch_rows
    ):
        if rb.num_rows:
            yield rb
