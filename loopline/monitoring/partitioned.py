"""The drift reference profile of a large Delta table, built per partition on a cluster, equal to the
single-process profile (`build_reference_profile` / `ProfileBuilder`) bit for bit.

Per partition (data files of the table's snapshot; `profile_partition`, on a worker): each numeric column's
finite values, sorted, staged as a .npy file, with the count of NaN/inf dropped; each categorical column's
value counts. Then `merge_profile` (the committer) adds the counts, merges the sorted runs (a stable sort of concatenated
sorted runs: timsort merges them in O(n log P)) and hands every column's whole sorted array to the same
`profile_numeric` a single process uses. The statistics are then computed from the identical array in the
identical order, so every number is the single-process one: no partial sums or sketches whose rounding would
differ. (The one exception is the sign of zero: -0.0 and 0.0 compare equal, so which of them sits at a tied
position may differ; a profile edge could read -0.0 where a single process reads 0.0. Same value.)

The cost this keeps: the merge holds one column (8 bytes a value) at a time, as `ProfileBuilder.finish`
does; the workers do the reading, parsing and sorting, which is most of the time. Mean and std from
per-partition sums (no full column anywhere) would differ from numpy's pairwise sum over the sorted column
by a few ulps (relative ~1e-16 x log2 n); quantile edges from a distributed selection would be exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loopline.monitoring.binning import sort_finite
from loopline.monitoring.profile import (
    DEFAULT_BINS,
    DEFAULT_CDF_BINS,
    DEFAULT_RAW_MAX_ROWS,
    _categorical_entry,
    _empty_profile,
    column_as_float,
    count_categories,
    profile_numeric,
)
from loopline.storage.lake import Lake, is_s3_uri, split_s3_uri
from loopline.storage.partitions import read_file


@dataclass(frozen=True)
class ProfilePartition:
    index: int
    table_uri: str
    version: int
    files: tuple[str, ...]  # data files of the snapshot (a few small files make one partition)
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    stage_root: str
    batch_rows: int = 250_000


@dataclass
class PartitionSummary:
    rows: int
    numeric: dict[str, tuple[str, int, int]]  # column -> (staged .npy, finite values, NaN/inf dropped)
    categorical: dict[str, tuple[dict[str, int], int]]  # column -> (value counts, missing)


def profile_partition(lake: Lake, part: ProfilePartition) -> PartitionSummary:
    """Sort and count the columns of one partition's data files; stage each numeric column's sorted finite values."""
    columns = list(part.numeric) + list(part.categorical)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in part.numeric}
    counts: dict[str, tuple[dict[str, int], int]] = {name: ({}, 0) for name in part.categorical}
    rows = 0
    batches = (
        rb
        for path in part.files
        for rb in read_file(
            lake, part.table_uri, part.version, path, columns=columns, batch_rows=part.batch_rows
        )
    )
    for rb in batches:
        frame = rb.to_pandas()
        rows += len(frame)
        for name in part.numeric:
            chunks[name].append(column_as_float(frame, name, "reference"))
        for name in part.categorical:
            counts[name] = _add(counts[name], count_categories(frame, name, "reference"))
    folder = f"{part.stage_root.rstrip('/')}/{part.index:06d}-{uuid.uuid4().hex[:12]}"
    numeric = {}
    for i, name in enumerate(part.numeric):
        values = np.concatenate(chunks[name]) if chunks[name] else np.empty(0)
        xs, dropped = sort_finite(values, in_place=True)
        numeric[name] = (_stage(lake, f"{folder}/{i}.npy", xs), len(xs), dropped)
    return PartitionSummary(rows=rows, numeric=numeric, categorical=counts)


def merge_profile(
    lake: Lake,
    summaries: list[PartitionSummary],
    numeric: list[str],
    categorical: list[str],
    *,
    bins: int = DEFAULT_BINS,
    cdf_bins: int = DEFAULT_CDF_BINS,
    raw_max_rows: int = DEFAULT_RAW_MAX_ROWS,
) -> dict[str, Any]:
    """The profile of all partitions together, as a single process builds it from the whole table."""
    profile = _empty_profile(numeric, categorical, bins, cdf_bins, raw_max_rows)
    profile["n_rows"] = sum(s.rows for s in summaries)
    opts = {"bins": bins, "cdf_bins": cdf_bins, "raw_max_rows": raw_max_rows}
    for name in numeric:
        runs, dropped = [], 0
        for s in summaries:
            path, count, nonfinite = s.numeric[name]
            run = _load(lake, path)
            if len(run) != count:
                raise RuntimeError(
                    f"staged profile run {path}: {len(run)} values, its worker counted {count}"
                )
            runs.append(run)
            dropped += nonfinite
        column = np.sort(np.concatenate(runs) if runs else np.empty(0), kind="stable")
        del runs
        entry = profile_numeric(column, in_place=True, **opts)
        entry["n_missing"] += dropped  # the runs hold finite values only: add what the workers dropped
        profile["numeric"][name] = entry
    for name in categorical:
        total: tuple[dict[str, int], int] = ({}, 0)
        for s in summaries:
            total = _add(total, s.categorical[name])
        profile["categorical"][name] = _categorical_entry(*total)
    return profile


def _add(a: tuple[dict[str, int], int], b: tuple[dict[str, int], int]) -> tuple[dict[str, int], int]:
    counts = dict(a[0])
    for key, count in b[0].items():
        counts[key] = counts.get(key, 0) + count
    return counts, a[1] + b[1]


def _stage(lake: Lake, uri: str, values: np.ndarray) -> str:
    if is_s3_uri(uri):
        import io

        buffer = io.BytesIO()
        np.save(buffer, values)
        bucket, key = split_s3_uri(uri)
        lake.s3_client().put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        return uri
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    np.save(uri, values)
    return uri


def _load(lake: Lake, uri: str) -> np.ndarray:
    if is_s3_uri(uri):
        import io

        return np.load(io.BytesIO(lake.get_bytes(uri)))
    return np.load(uri)
