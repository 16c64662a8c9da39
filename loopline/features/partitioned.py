"""features/D built per partition on a cluster (`data.executor: dask`): the same build, the same commit, the
same rows, bit for bit.

A partition is one data file of clean/D's snapshot, read with the build's filter (the batches features/D does
not hold yet). The transform is fitted once by the committer (loopline.features.table, on its usual sample)
and applied to each partition on a worker; it is row-wise (each output row depends only on its input row and
the fitted JSON), so each row's float32 values are the ones a single process computes. The committer streams
the staged partitions into the one features/D commit (the rows are the same; their order inside the table is
not a property of a build: a single process's own scan and the Delta writer's threads reorder batches),
with the same app transactions, writer transaction and kill points: exactly once as before.
A worker writes only its own staged file (named per attempt), so a rerun of a partition never touches the
file the committer reads.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from loopline.config import FeaturesConfig
from loopline.data.contracts import Contract
from loopline.faults import kill_point
from loopline.storage.lake import Lake, is_s3_uri, split_s3_uri
from loopline.storage.partitions import open_file, snapshot_files


@dataclass(frozen=True)
class FeaturePartition:
    index: int
    file: str  # the data file's path, as the snapshot's pyarrow dataset names it
    clean_version: int
    batches: tuple[str, ...]  # the batches to transform (features/D lacks them)
    transform_version: str
    stage_root: str
    batch_rows: int


def partitions(clean_ds: pads.Dataset, flt: pc.Expression, **common) -> list[FeaturePartition]:
    """One partition per data file of the snapshot that may hold rows of the new batches, in file order."""
    return [
        FeaturePartition(index=i, file=path, **common) for i, path in enumerate(snapshot_files(clean_ds, flt))
    ]


def transform_partition(
    lake: Lake, contract: Contract, cfg: FeaturesConfig, part: FeaturePartition
) -> tuple[str, int]:
    """Transform one partition and stage it as Parquet. Returns (staged file, rows)."""
    from loopline.features.table import _features_batch, features_schema
    from loopline.features.transform import load_transform

    one = open_file(lake, lake.table_uri("clean", contract.dataset), part.clean_version, part.file)
    transform = load_transform(lake, contract.dataset, part.transform_version)
    schema = features_schema(contract, transform, one.schema)
    flt = pc.field("_batch_id").isin(list(part.batches))
    target = f"{part.stage_root.rstrip('/')}/{part.index:06d}-{uuid.uuid4().hex[:12]}.parquet"
    local = Path(target) if not is_s3_uri(target) else Path(_scratch()) / Path(target).name
    local.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(local, schema, compression="lz4") as writer:
        for rb in one.to_batches(filter=flt, batch_size=part.batch_rows):
            if rb.num_rows:
                writer.write_batch(_features_batch(rb.to_pandas(), contract, transform, cfg, schema))
                rows += rb.num_rows
    if is_s3_uri(target):
        bucket, key = split_s3_uri(target)
        lake.s3_client().upload_file(str(local), bucket, key)
        local.unlink()
    return target, rows


class Staged:
    """The build's staging folder (`_staging/features/<build>` in the lake): the partitions' files, read back
    in order for the commit, removed after it."""

    def __init__(self, lake: Lake, root: str):
        self.lake, self.root = lake, root
        self._local: str | None = None

    def reader(self, schema: pa.Schema, staged: list[tuple[str, int]], counter: dict) -> pa.RecordBatchReader:
        """The staged partitions, in order, as one stream. Each file is checked against the rows its worker
        counted before a row of it is handed over."""
        paths = []
        for i, (uri, rows) in enumerate(staged):
            path = Path(uri)
            if is_s3_uri(uri):
                self._local = self._local or _scratch()
                path = Path(self._local) / f"{i:06d}.parquet"
                path.write_bytes(self.lake.get_bytes(uri))
            found = pq.ParquetFile(path).metadata.num_rows
            if found != rows:
                raise RuntimeError(
                    f"staged features partition {uri}: {found} rows, its worker counted {rows}"
                )
            paths.append(path)

        def batches() -> Iterator[pa.RecordBatch]:
            for path in paths:
                for rb in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                    counter["rows"] += rb.num_rows
                    yield rb.cast(schema)
                    kill_point("features.writing")  # files of the commit being written, the commit not made

        return pa.RecordBatchReader.from_batches(schema, batches())

    def remove(self) -> None:
        if is_s3_uri(self.root):
            for uri in self.lake.list(self.root):
                self.lake.delete(uri)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        if self._local:
            shutil.rmtree(self._local, ignore_errors=True)


def _scratch() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="loopline-features-")
