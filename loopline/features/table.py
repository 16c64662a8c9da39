"""features/D: clean/D through the fitted transform, kept up to date incrementally.

Rows carry the id, the label, `_split` (a stable hash of the id), `_batch_id` and `_transform`. Only clean
batches not yet in features/D are transformed and appended. `refit=True` fits a new transform and rewrites the
table (a new version; older versions stay readable by time travel).

Exactly once per batch, whatever builds run at once (the features trigger, the retrain new-data trigger, the
lifecycle's own call, two plain processes): the build reads which batches features/D holds from one snapshot
and commits from that same snapshot. The commit carries one app transaction per batch (dataset, transform
version, batch id; a refit adds the version it replaces, so refitting back to an earlier transform is a new
commit) and the table's writer transaction (`WRITER`, version previous + 1), so a commit made by any other
build since the snapshot (an append, or a refit's overwrite, which delta-rs would otherwise let an append slip
past) makes this one fail with CommitFailedError; the build then reads again, recomputes the new batches and
retries (loopline.storage.delta.retry_conflicts: bounded, jittered, a clear error after the last attempt).
A kill at any point (kill points features.before_commit, .writing, .after_commit) leaves either no commit or the
whole one: the rerun adds exactly what is missing.

The transform follows the contract. It stores the contract it was fitted with; when the dataset's latest
contract differs in what features or serving read (the id, label, task, or any column's type or checks),
the build refits on its own and says why (`refit_reason`): after an incompatible change it must (the
old steps may read a column that is gone or retyped), and after a compatible one it does too, because a
transform kept on the old contract would ignore a new column and put a new category in the unknown bucket
until someone refits, fail on a new label class, and hand the models trained on it (their bundle carries
the transform's contract, which serving checks requests against) a contract that refuses values the lake
now accepts (a wider range, a new category). A contract change is rare and deliberate; one rewrite of
features/D per change is its price. Changes only the ingest gate reads (quarantine_max_fraction, the
description) keep the transform.

clean/D may hold columns of several contract versions (Delta schema merge: a column added by a later
version is null in earlier batches, a removed one null in later batches); `contract_columns` reads a
contract's columns from it, with nulls for a column that no batch has yet.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from loopline.config import FeaturesConfig
from loopline.data.allocator import use_data_plane_allocator
from loopline.data.contract_registry import contract_version_of, diff_contracts
from loopline.data.contracts import Contract
from loopline.data.encoding import clean_parquet_options, clean_properties
from loopline.data.prefetch import read_ahead
from loopline.data.schemas import ARROW_TYPES
from loopline.errors import NotReadyError
from loopline.faults import kill_point
from loopline.features.transform import (
    FIT_SAMPLE_ROWS,
    FeatureTransform,
    assign_split,
    fit_transform,
    load_transform,
    save_transform,
)
from loopline.storage import delta
from loopline.storage.lake import Lake

WRITER = (
    "loopline-features-writer"  # the app transaction every features/D commit carries (version previous + 1)
)


def features_schema(contract: Contract, transform: FeatureTransform, clean: pa.Schema) -> pa.Schema:
    fields = [clean.field(contract.id), clean.field(contract.label)]
    fields += [
        pa.field("_split", pa.string()),
        pa.field("_batch_id", pa.string()),
        pa.field("_transform", pa.string()),
    ]
    fields += [pa.field(name, pa.float32()) for name in transform.feature_names]
    return pa.schema(fields)


def contract_columns(schema: pa.Schema, contract: Contract, names: list[str]) -> dict[str, pc.Expression]:
    """A projection (for `Dataset.to_batches/to_table(columns=...)`) of clean/D's `names` columns: a column
    the table does not hold (the contract version that added it has no accepted batch yet) reads as nulls."""
    return {
        name: pc.field(name)
        if name in schema.names
        else pc.scalar(pa.scalar(None, ARROW_TYPES[contract.columns[name].type]))
        for name in names
    }


def refit_reason(lake: Lake, fitted: Contract, latest: Contract) -> str | None:
    """Why a transform fitted on `fitted` must be refit for the dataset's `latest` contract (None: keep it).
    See the module docstring for the policy."""
    if fitted.hash == latest.hash or _feature_view(fitted) == _feature_view(latest):
        return None
    changes = diff_contracts(fitted, latest)
    breaking = [c.what for c in changes if not c.compatible]
    which = f"contract {_label(lake, fitted)} -> {_label(lake, latest)}"
    if breaking:
        return f"{which} changed incompatibly: " + "; ".join(breaking)
    what = "; ".join(c.what for c in changes if not c.what.startswith("quarantine_max_fraction"))
    return f"{which} changed compatibly ({what or 'column order'}): the transform follows the contract"


def _feature_view(contract: Contract) -> tuple:
    """What the transform and the bundled contract's serving checks read (the column order does not matter)."""
    return (contract.id, contract.label, contract.task, contract.columns)


def _label(lake: Lake, contract: Contract) -> str:
    version = contract_version_of(lake, contract.dataset, contract.hash)
    return f"v{version} ({contract.hash})" if version is not None else contract.hash


def build_features(
    lake: Lake,
    contract: Contract,
    cfg: FeaturesConfig,
    *,
    refit: bool = False,
    batch_rows: int = 250_000,
    map_partitions: Callable | None = None,
) -> dict[str, Any]:
    """Bring features/D up to date with clean/D under `contract`, the dataset's latest contract (a transform
    fitted on another one is refit: see the module docstring). Returns versions and counts (the CLI's JSON).
    Safe to run concurrently with other builds and ingests of the dataset.
    `map_partitions(parts)`: transforms the new rows per data file on a cluster instead of here, returning
    each partition's (staged file, rows) in order (loopline.features.partitioned): the same commit, the same
    rows."""
    use_data_plane_allocator()
    return delta.retry_conflicts(
        lambda: _build(
            lake, contract, cfg, refit=refit, batch_rows=batch_rows, map_partitions=map_partitions
        ),
        f"the features/{contract.dataset} build",
    )


def batch_app_id(dataset: str, transform_version: str, batch_id: str, replaces: int | None = None) -> str:
    """The app transaction of one batch in one features/D commit (see the module docstring)."""
    key = f"{dataset}|{transform_version}|{batch_id}" + (
        f"|replaces:{replaces}" if replaces is not None else ""
    )
    return "loopline-features-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _build(
    lake: Lake,
    contract: Contract,
    cfg: FeaturesConfig,
    *,
    refit: bool,
    batch_rows: int,
    map_partitions: Callable | None = None,
) -> dict[str, Any]:
    dataset = contract.dataset
    clean_uri, feat_uri = lake.table_uri("clean", dataset), lake.table_uri("features", dataset)
    clean = delta.open_table(lake, clean_uri)
    if clean is None:
        raise NotReadyError(f"dataset {dataset!r} has no clean data yet: run `loopline ingest` first")
    clean_version = clean.version()
    # THE snapshot: the batches it holds are not redone, and the commit is made from it
    feats = delta.open_table(lake, feat_uri)
    replaced = feats.version() if feats is not None else None  # the version a refit rewrites
    reason = "requested" if refit else None
    transform: FeatureTransform | None = None
    done: set[str] = set()
    if feats is not None and not refit:
        # from the log when every file holds one batch of one transform (features/D's metadata columns come
        # first: Delta keeps their statistics); else the columns, in order (the last transform is the current)
        logged = delta.add_actions(feats)
        done_ids = delta.distinct_from_log(feats, "_batch_id", logged)
        versions = delta.distinct_from_log(feats, "_transform", logged)
        if done_ids is None or versions is None or len(versions) > 1:
            done_ids, versions = _distinct(delta.dataset(feats), ["_batch_id", "_transform"])
        done = set(done_ids)
        if versions:
            transform = load_transform(lake, dataset, versions[-1])
            reason = refit_reason(lake, transform.contract, contract)
            if reason is not None:
                refit, transform, done = True, None, set()
    clean_ds = delta.dataset(clean)
    # the batches from the Delta log's statistics (a file holds one batch until maintenance merges files);
    # the `_batch_id` column itself only where those do not settle it
    clean_log = delta.add_actions(clean)
    all_batches = delta.distinct_from_log(clean, "_batch_id", clean_log)
    if all_batches is None:
        (all_batches,) = _distinct(clean_ds, ["_batch_id"])
    all_batches = sorted(all_batches)
    new_batches = [b for b in all_batches if b not in done]
    if transform is None:
        rows = delta.files_and_rows(clean, clean_log)[1]
        transform = fit_transform(_train_sample(clean_ds, rows, contract, cfg), contract, cfg)
    tv = save_transform(lake, dataset, transform)
    result = {
        "dataset": dataset,
        "clean_version": clean_version,
        "features_version": replaced,
        "transform_version": tv,
        # the lake's version of the contract the transform follows (None: a contract the lake never saw)
        "contract_version": contract_version_of(lake, dataset, transform.contract.hash),
        "new_batches": 0,
        "rows_added": 0,
        "refit": refit,
        "refit_reason": reason,  # None, "requested", or the contract change that made it refit on its own
    }
    if not new_batches:
        return result
    flt = pc.field("_batch_id").isin(new_batches)
    schema = features_schema(contract, transform, clean_ds.schema)
    counter = {"rows": 0}
    # only what the transform and the table read: the new batches (row groups pruned by their `_batch_id`
    # statistics) and the columns of the transform's steps, the id, the label and `_batch_id`
    wanted = {step["column"] for step in transform.steps} | {contract.id, contract.label, "_batch_id"}
    columns = [name for name in clean_ds.schema.names if name in wanted]

    def transformed() -> Iterator[tuple[int, pa.RecordBatch]]:
        for rb in clean_ds.to_batches(columns=columns, filter=flt, batch_size=batch_rows):
            if rb.num_rows:
                yield rb.num_rows, _features_batch(rb.to_pandas(), contract, transform, cfg, schema)

    def batches() -> Iterator[pa.RecordBatch]:
        # the next batch is read and transformed on a thread while delta-rs encodes this one
        for n, rb in read_ahead(transformed()):
            counter["rows"] += n
            yield rb
            kill_point("features.writing")  # files of the commit being written, the commit not made

    rows: pa.RecordBatchReader = pa.RecordBatchReader.from_batches(schema, batches())
    staged = None
    if map_partitions is not None:  # transformed per data file on a cluster, then streamed in the same order
        from loopline.features import partitioned

        staged = partitioned.Staged(
            lake, f"{lake.root.rstrip('/')}/_staging/features/{uuid.uuid4().hex[:16]}"
        )
        parts = partitioned.partitions(
            clean_ds,
            flt,
            clean_version=clean_version,
            batches=tuple(new_batches),
            transform_version=tv,
            stage_root=staged.root,
            batch_rows=batch_rows,
        )
        rows = staged.reader(schema, map_partitions(parts), counter)
    # a refit names the version it replaces: refitting back to an earlier transform over the same batches
    # (a contract reverted) is a new commit, not a no-op against the first one's app transactions
    replaces = replaced if refit else None
    kill_point("features.before_commit")
    try:
        version, written = delta.append_once(
            lake,
            feat_uri,
            rows,
            app_id=[batch_app_id(dataset, tv, b, replaces) for b in new_batches],
            metadata={"transform": tv, "clean_version": clean_version, "batches": len(new_batches)},
            mode="overwrite" if refit else "append",
            table=feats,
            writer=WRITER,
            writer_properties=clean_properties(contract, schema),
            parquet_options=clean_parquet_options(contract, schema),
        )
    finally:
        if staged is not None:
            staged.remove()
    kill_point("features.after_commit")
    if not written:  # the batches' app transactions are in the snapshot: they are in the table already
        return {**result, "features_version": version}
    return {
        **result,
        "features_version": version,
        "new_batches": len(new_batches),
        "rows_added": counter["rows"],
    }


def _distinct(ds, columns: list[str]) -> list[list]:
    """Each column's distinct values in order of first appearance, one record batch at a time: a table's
    `_batch_id` column read whole is a 20-character string per row (10M rows: 240 MB for a handful of values)."""
    seen: list[dict] = [{} for _ in columns]
    for rb in ds.to_batches(columns=columns, batch_size=1 << 20):
        for values, column in zip(seen, rb.columns, strict=True):
            values.update(dict.fromkeys(pc.unique(column).to_pylist()))
    return [list(values) for values in seen]


def _train_sample(clean_ds, table_rows: int, contract: Contract, cfg: FeaturesConfig) -> pd.DataFrame:
    """The train rows the transform is fit on: up to FIT_SAMPLE_ROWS of them, from files spread evenly over
    the whole table (every k-th file, k from the files' row counts), so a refit after many batches sees
    old and new batches alike, not only the files listed first (delta-rs lists the newest first). A table
    of up to FIT_SAMPLE_ROWS train rows is read whole. `table_rows`: the snapshot's rows (its Delta log's
    statistics: no file footer is read)."""
    cols = contract_columns(clean_ds.schema, contract, contract.feature_columns + [contract.id])
    fragments = list(clean_ds.get_fragments())
    expected = table_rows * cfg.split_fractions[0] / sum(cfg.split_fractions)
    if expected > FIT_SAMPLE_ROWS and len(fragments) > 1:
        keep = math.ceil(len(fragments) * FIT_SAMPLE_ROWS / expected)
        picks = sorted({round(i * (len(fragments) - 1) / max(keep - 1, 1)) for i in range(keep)})
        clean_ds = pads.FileSystemDataset(
            [fragments[i] for i in picks], clean_ds.schema, clean_ds.format, clean_ds.filesystem
        )
    parts, n = [], 0
    for rb in clean_ds.to_batches(columns=cols, batch_size=250_000):
        # the train rows are picked in Arrow and the sample becomes one frame once: a pandas filter and concat
        # of every column cost 0.6 s of the 1M-row build (bench/data_plane)
        train = assign_split(rb.column(contract.id).to_pandas(), cfg.split_fractions) == "train"
        part = rb.filter(pa.array(train))
        parts.append(part)
        n += part.num_rows
        if n >= FIT_SAMPLE_ROWS:  # files larger than their share: the bound holds memory, not the spread
            break
    if not parts:
        return pd.DataFrame(columns=list(cols))
    return pa.Table.from_batches(parts).to_pandas()


def _features_batch(
    frame: pd.DataFrame, contract: Contract, transform: FeatureTransform, cfg, schema
) -> pa.RecordBatch:
    matrix = transform.transform(frame, order="F")  # one contiguous array per feature column
    arrays = [
        pa.array(frame[contract.id].to_numpy(), type=schema.field(contract.id).type),
        pa.array(frame[contract.label].to_numpy(), type=schema.field(contract.label).type),
        pa.array(assign_split(frame[contract.id], cfg.split_fractions), pa.string()),
        _text(frame["_batch_id"]),
        pa.repeat(pa.scalar(transform.version, pa.string()), len(frame)),
    ]
    arrays += [pa.array(matrix[:, j]) for j in range(matrix.shape[1])]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _text(values: pd.Series) -> pa.Array:
    """A text column as Arrow strings: zero-copy from Arrow-backed text, no Python objects."""
    if isinstance(values.dtype, pd.StringDtype):
        return pa.array(values.array).cast(pa.string())
    return pa.array(values.to_numpy(dtype=object), pa.string())
