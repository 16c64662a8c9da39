"""The lake remembers each dataset's contract: `contracts/D` is a Delta table of its versions.

The first ingest of dataset D registers the contract it was given; every later command that names D finds
it here, so `--contract` is needed only to ingest. A changed contract is diffed against the latest version:
compatible changes (a new nullable column, a wider range, a new category, a relaxed check) become a new
version; incompatible ones (a type change, a removed column, a narrower range, a new required column, ...)
are refused with every change named, unless the caller asks for them explicitly.

Each row stores its version number (1, 2, ...) and is committed with an app transaction named after it,
so two registrations racing for the same number conflict in Delta: the loser reads the winner and either
finds its own contract there (one version, no duplicate) or diffs against it and tries the next number.
Creating a Delta table is the one write Delta cannot make exclusive (two creators may both commit), so the
table is created empty before its first row and that race is over no rows. Should two rows with one number
land anyway (a store without atomic commits), readers keep the earliest and a writer whose row was not
kept tries again. A retry after a crash is a no-op: the latest version already has the contract's hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from deltalake import write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from loopline.config import DataConfig
from loopline.data.contracts import ColumnSpec, Contract, load_contract, parse_contract
from loopline.errors import ConfigError, ContractError
from loopline.storage import delta
from loopline.storage.lake import Lake

TABLE = "contracts"
SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("hash", pa.string()),
        pa.field("previous_hash", pa.string()),
        pa.field("contract_yaml", pa.string()),
        pa.field("changes", pa.string()),  # JSON list of {"change", "compatible"}
        pa.field("source", pa.string()),
        pa.field("registered_at", pa.timestamp("us", tz="UTC")),
        # the version number; null in rows written before it was stored (numbered by registered_at)
        pa.field("version", pa.int64()),
    ]
)
REGISTER_ATTEMPTS = 8  # each lost race means another writer registered a version: a few always suffice


@dataclass(frozen=True)
class Change:
    what: str  # names the column and the check: "column 'age': max 120 -> 100 (narrower)"
    compatible: bool


@dataclass(frozen=True)
class ContractVersion:
    dataset: str
    version: int
    hash: str
    contract: Contract
    changes: tuple[Change, ...]
    registered_at: datetime


class UnknownDatasetError(ConfigError):
    """A command named a dataset the lake has never ingested."""


def contracts_uri(lake: Lake, dataset: str) -> str:
    return lake.uri(TABLE, dataset)


def contract_versions(lake: Lake, dataset: str) -> list[ContractVersion]:
    """Every registered version of D's contract, oldest first (empty when D was never ingested)."""
    table = delta.open_table(lake, contracts_uri(lake, dataset))
    if table is None:
        return []
    rows = delta.dataset(table).to_table().to_pylist()
    unnumbered = sorted((r for r in rows if r.get("version") is None), key=lambda r: r["registered_at"])
    for i, row in enumerate(unnumbered, start=1):
        row["version"] = i
    kept: dict[int, dict] = {}
    for row in rows:  # one row per number: the earliest (a race that Delta could not refuse)
        other = kept.get(row["version"])
        if other is None or (row["registered_at"], row["hash"]) < (other["registered_at"], other["hash"]):
            kept[row["version"]] = row
    out: list[ContractVersion] = []
    for number in sorted(kept):
        row = kept[number]
        source = f"lake {contracts_uri(lake, dataset)} v{number}"
        contract = parse_contract(yaml.safe_load(row["contract_yaml"]), file=source)
        changes = tuple(Change(c["change"], c["compatible"]) for c in json.loads(row["changes"] or "[]"))
        out.append(ContractVersion(dataset, number, row["hash"], contract, changes, row["registered_at"]))
    return out


def latest_contract(lake: Lake, dataset: str) -> ContractVersion | None:
    versions = contract_versions(lake, dataset)
    return versions[-1] if versions else None


def contract_version_of(lake: Lake, dataset: str, contract_hash: str) -> int | None:
    """The lake's version number of D's contract with this hash (the newest, if it was registered twice);
    None when the lake never registered it."""
    found = [v.version for v in contract_versions(lake, dataset) if v.hash == contract_hash]
    return found[-1] if found else None


def known_datasets(lake: Lake) -> list[str]:
    """Datasets with a registered contract."""
    prefix = lake.uri(TABLE)
    if lake.is_s3:
        names = {u[len(prefix) + 1 :].split("/", 1)[0] for u in lake.list(prefix)}
    else:
        root = Path(prefix)
        names = {p.name for p in root.iterdir() if (p / "_delta_log").is_dir()} if root.is_dir() else set()
    return sorted(n for n in names if n)


def dataset_name(data: DataConfig) -> str:
    """The dataset a command works on: `data.dataset`, else the contract file's dataset."""
    return data.dataset or load_contract(data.contract).dataset


def resolve_contract(lake: Lake, data: DataConfig) -> Contract:
    """The contract a command works with. The lake's latest version of the dataset wins; the contract file
    serves only a dataset the lake does not know yet (an ingest registers it)."""
    if data.dataset:
        found = latest_contract(lake, data.dataset)
        if found is not None:
            return found.contract
        if Path(data.contract).is_file():
            from_file = load_contract(data.contract)
            if from_file.dataset == data.dataset:
                return from_file
        return require_contract(lake, data.dataset)  # raises, naming the datasets the lake knows
    from_file = load_contract(data.contract)
    found = latest_contract(lake, from_file.dataset)
    return found.contract if found is not None else from_file


def ingest_contract(lake: Lake, data: DataConfig) -> Contract:
    """The contract an ingest judges by: the contract file (it becomes a new version when it changed),
    unless `data.dataset` names a dataset the file is not about: then the lake's latest version of it."""
    if data.dataset:
        if Path(data.contract).is_file():
            from_file = load_contract(data.contract)
            if from_file.dataset == data.dataset:
                return from_file
        return require_contract(lake, data.dataset)
    return load_contract(data.contract)


def require_contract(lake: Lake, dataset: str) -> Contract:
    """D's latest contract; an UnknownDatasetError (exit 2) naming the known datasets when D has none."""
    found = latest_contract(lake, dataset)
    if found is None:
        known = known_datasets(lake)
        listing = ", ".join(repr(d) for d in known) if known else "none yet"
        raise UnknownDatasetError(
            f"dataset {dataset!r} is not in the lake at {lake.root} (datasets: {listing}); "
            f"ingest it first: loopline ingest --contract <contract.yaml> --source <file>"
        )
    return found.contract


def register_contract(lake: Lake, contract: Contract, *, allow_incompatible: bool = False) -> ContractVersion:
    """Make `contract` D's latest version (a no-op when it already is). Raises ContractError naming every
    incompatible change, unless `allow_incompatible` or D has no clean rows yet (nothing the change breaks). Safe to call concurrently (see the module docstring)."""
    uri = contracts_uri(lake, contract.dataset)
    _create_empty(lake, uri)
    for _ in range(REGISTER_ATTEMPTS):
        versions = contract_versions(lake, contract.dataset)
        latest = versions[-1] if versions else None
        if latest is not None and latest.hash == contract.hash:
            return latest
        changes = diff_contracts(latest.contract, contract) if latest is not None else []
        breaking = [c.what for c in changes if not c.compatible]
        if breaking and not allow_incompatible and _holds_clean_rows(lake, contract.dataset):
            raise ContractError(
                f"incompatible with version {latest.version} of dataset {contract.dataset!r} in the lake: "
                + "; ".join(breaking)
                + ". Keep the old checks, or ingest with --allow-incompatible to make this version "
                "(features are then refit)",
                file=contract.path,
            )
        number = latest.version + 1 if latest is not None else 1
        row = {
            "dataset": contract.dataset,
            "hash": contract.hash,
            "previous_hash": latest.hash if latest is not None else "",
            "contract_yaml": yaml.safe_dump(contract.raw, sort_keys=False),
            "changes": json.dumps([{"change": c.what, "compatible": c.compatible} for c in changes]),
            "source": contract.path or "",
            "registered_at": datetime.now(UTC),
            "version": number,
        }
        try:
            delta.append_once(
                lake,
                uri,
                pa.Table.from_pylist([row], schema=SCHEMA),
                app_id=f"loopline-contract-v{number}",
                metadata={"dataset": contract.dataset, "hash": contract.hash, "version": number},
            )
        except CommitFailedError:  # another writer committed version `number` first: read it, go again
            continue
        mine = next((v for v in contract_versions(lake, contract.dataset) if v.version == number), None)
        if mine is not None and mine.hash == contract.hash:
            return mine
    raise ContractError(
        f"dataset {contract.dataset!r}: its contract kept changing while this one was being registered "
        f"({REGISTER_ATTEMPTS} attempts); try again",
        file=contract.path,
    )


def _holds_clean_rows(lake: Lake, dataset: str) -> bool:
    """Whether any batch of D was accepted: until one is, no row was validated under its contract and no
    model was trained on it, so a change of the contract breaks nothing (a first batch the gate rejected
    for a mistake in the contract is fixed by correcting the contract, not with --allow-incompatible)."""
    table = delta.open_table(lake, lake.table_uri("clean", dataset))
    return table is not None and delta.files_and_rows(table)[1] > 0


def _create_empty(lake: Lake, uri: str) -> None:
    """contracts/D with no rows, unless it exists (see the module docstring: why empty first)."""
    if delta.open_table(lake, uri) is not None:
        return
    try:
        write_deltalake(uri, SCHEMA.empty_table(), mode="append", storage_options=lake.storage_options)
    except (CommitFailedError, DeltaError):  # created by a concurrent registration meanwhile
        if delta.open_table(lake, uri) is None:
            raise


def diff_contracts(old: Contract, new: Contract) -> list[Change]:
    """What changed from `old` to `new`, each change marked compatible (old data still valid, old models
    still fed) or not."""
    changes: list[Change] = []
    for key in ("id", "label", "task"):
        if getattr(old, key) != getattr(new, key):
            changes.append(Change(f"{key}: {getattr(old, key)!r} -> {getattr(new, key)!r}", False))
    if new.quarantine_max_fraction != old.quarantine_max_fraction:
        changes.append(
            Change(
                f"quarantine_max_fraction: {old.quarantine_max_fraction} -> {new.quarantine_max_fraction}",
                True,
            )
        )
    for name in old.columns:
        if name not in new.columns:
            changes.append(Change(f"column {name!r} removed", False))
    for name, spec in new.columns.items():
        if name not in old.columns:
            ok = spec.nullable
            what = "added (nullable)" if ok else "added, not nullable (rows without it would be rejected)"
            changes.append(Change(f"column {name!r} {what}", ok))
        else:
            changes += _column_changes(old.columns[name], spec, is_label=name == new.label)
    return changes


def _column_changes(old: ColumnSpec, new: ColumnSpec, *, is_label: bool) -> list[Change]:
    col = f"column {old.name!r}"
    out: list[Change] = []
    if old.type != new.type:
        # even int -> float: clean/D's column type cannot change under the data already in it
        return [Change(f"{col}: type {old.type} -> {new.type}", False)]
    if old.nullable != new.nullable:
        out.append(Change(f"{col}: nullable {old.nullable} -> {new.nullable}", new.nullable))
    for bound, wider in (("min", lambda a, b: b < a), ("max", lambda a, b: b > a)):
        a, b = getattr(old, bound), getattr(new, bound)
        if a == b:
            continue
        if b is None:
            out.append(Change(f"{col}: {bound} {a} removed (wider)", True))
        elif a is None:
            out.append(Change(f"{col}: {bound} {b} added (narrower)", False))
        else:
            ok = wider(a, b)
            out.append(Change(f"{col}: {bound} {a} -> {b} ({'wider' if ok else 'narrower'})", ok))
    if old.values != new.values:
        before = {str(v) for v in old.values or ()}
        after = {str(v) for v in new.values or ()}
        if new.values is None:
            out.append(Change(f"{col}: values list removed (any value)", old.type != "category"))
        elif old.values is None:
            out.append(Change(f"{col}: values restricted to {sorted(after)}", False))
        else:
            added, removed = sorted(after - before), sorted(before - after)
            if added:
                out.append(Change(f"{col}: new values {added}", True))
            if removed:
                out.append(Change(f"{col}: values {removed} removed", False))
            if not added and not removed:
                # the label's classes are indexed in order: a reorder would relabel every model's output
                out.append(Change(f"{col}: values reordered", not is_label))
    if old.unique != new.unique:
        out.append(Change(f"{col}: unique {old.unique} -> {new.unique}", not new.unique))
    if old.regex != new.regex:
        out.append(Change(f"{col}: regex {old.regex!r} -> {new.regex!r}", new.regex is None))
    if old.max_length != new.max_length:
        ok = new.max_length is None or (old.max_length is not None and new.max_length > old.max_length)
        out.append(Change(f"{col}: max_length {old.max_length} -> {new.max_length}", ok))
    return out


def describe(version: ContractVersion) -> dict[str, Any]:
    """The JSON face of a version (status, artifacts)."""
    return {
        "dataset": version.dataset,
        "version": version.version,
        "hash": version.hash,
        "registered_at": version.registered_at.isoformat(),
        "changes": [c.what for c in version.changes],
    }


__all__ = [
    "Change",
    "ContractVersion",
    "UnknownDatasetError",
    "contract_version_of",
    "contract_versions",
    "dataset_name",
    "ingest_contract",
    "describe",
    "diff_contracts",
    "known_datasets",
    "latest_contract",
    "register_contract",
    "require_contract",
    "resolve_contract",
]
