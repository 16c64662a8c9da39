"""Running the compiled suite through Great Expectations: a Checkpoint, Data Docs, and the cross-check.

One ephemeral GX context per batch holds a pandas data source, the suite, a ValidationDefinition and a
Checkpoint (with an UpdateDataDocsAction writing to `data_docs_dir` when Data Docs are on). Every run uses
result_format COMPLETE, so GX names every failing row (by the frame's index); `cross_check` then evaluates
the same checks with the numpy pass on the same frame and raises `EngineMismatchError` if any expectation's
failing rows differ. great_expectations is imported here, lazily (about 6 s), and never at module import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from loopline.data.contracts import Contract
from loopline.data.validation.suite import Check, build_suite, gx_checks, suite_name

DOCS_SITE = "loopline"
RESULTS_DIR = ".results"
# ints with nulls go to GX as float64 (GX's fast path) when floats hold them exactly
MAX_EXACT_FLOAT_INT = 2**53


class EngineMismatchError(AssertionError):
    """GX and the numpy pass disagree on a check: a bug in loopline's mirror of GX, never a data problem."""


@dataclass
class GxRun:
    run_name: str
    rows: int
    success: bool
    unexpected: dict[str, np.ndarray]  # check key -> index values of the failing rows
    data_docs_page: str | None = None
    statistics: dict = field(default_factory=dict)

    @property
    def unexpected_counts(self) -> dict[str, int]:
        return {key: int(len(idx)) for key, idx in self.unexpected.items()}


def import_gx():
    """great_expectations with its usage analytics off (unless the user turned them on explicitly)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


class GxValidator:
    """The contract's suite behind a GX Checkpoint. `run(frame, name)` validates a typed frame."""

    def __init__(
        self,
        contract: Contract,
        checks: list[Check],
        data_docs_dir: str | None = None,
        index_runs: int | None = None,
    ):
        gx = import_gx()
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.checks = gx_checks(checks)
        self.data_docs_dir = str(Path(data_docs_dir).resolve()) if data_docs_dir else None
        self.context = gx.get_context(
            mode="ephemeral", project_config=_context_config(self.data_docs_dir, index_runs)
        )
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        actions = (
            [UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if self.data_docs_dir else []
        )
        name = suite_name(contract)
        batch = (
            self.context.data_sources.add_pandas(f"{contract.dataset}-source")
            .add_dataframe_asset(contract.dataset)
            .add_batch_definition_whole_dataframe("batch")
        )
        suite = self.context.suites.add(build_suite(contract, checks))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        self.checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=actions,
                # COMPLETE names every failing row; the index query string (a copy of that list) is dropped
                result_format={"result_format": "COMPLETE", "return_unexpected_index_query": False},
            )
        )

    def run(self, frame: pd.DataFrame, run_name: str) -> GxRun:
        from great_expectations.core.run_identifier import RunIdentifier

        run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
        result = self.checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
        (identifier, validation), *_ = result.run_results.items()
        unexpected: dict[str, np.ndarray] = {}
        for item in validation.results:
            key = (item.expectation_config.meta or {}).get("loopline_key")
            error = _raised(item.exception_info)
            if error is not None:
                raise EngineMismatchError(f"GX could not evaluate {key}: {error}")
            unexpected[key] = np.asarray(item.result.get("unexpected_index_list") or [])
        page = None
        if self.data_docs_dir:
            urls = self.context.get_docs_sites_urls(resource_identifier=identifier, site_name=DOCS_SITE)
            page = _url_to_path(urls[0]["site_url"]) if urls else None
        return GxRun(
            run_name=run_name,
            rows=len(frame),
            success=bool(validation.success),
            unexpected=unexpected,
            data_docs_page=page,
            statistics=dict(validation.statistics),
        )

    def index_page(self) -> str | None:
        if not self.data_docs_dir:
            return None
        return str(Path(self.data_docs_dir) / "index.html")


def _context_config(data_docs_dir: str | None, index_runs: int | None = None):
    """An in-memory context, except (with Data Docs on) the validation results and the docs site on disk.

    The docs index lists the results in the results store and deletes pages it has no result for, so the
    results of earlier batches must persist for the index to keep them: they live in
    `<data_docs_dir>/.results` (JSON, one file per GX run). GX rebuilds the index at every run and reads each
    listed run's whole result (COMPLETE results name every failing row: 0.1-1 MB a batch), so the index
    lists the newest `index_runs` runs: without a bound each batch's run grew by 5-10 ms per earlier batch.
    """
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    config = DataContextConfig(store_backend_defaults=defaults, analytics_enabled=False)
    if data_docs_dir:
        Path(data_docs_dir).mkdir(parents=True, exist_ok=True)
        config.stores[config.validation_results_store_name]["store_backend"] = {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(Path(data_docs_dir) / RESULTS_DIR),
        }
        config.data_docs_sites = {
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "validation_results_limit": index_runs,
                },
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": data_docs_dir,
                },
            }
        }
    return config


def to_gx_frame(typed: pd.DataFrame) -> pd.DataFrame:
    """The typed frame in the dtypes GX's vectorised paths expect (GX maps Int64 values one by one).

    Int64 without nulls -> int64; with nulls -> float64 when every value is below 2**53 (exact), else Int64.
    boolean without nulls -> bool. The numpy pass of the cross-check runs on this same frame.
    """
    out = {}
    for name in typed.columns:
        col = typed[name]
        if isinstance(col.dtype, pd.Int64Dtype):
            if not col.isna().any():
                col = col.astype(np.int64)
            elif not col.notna().any() or col.abs().max(skipna=True) < MAX_EXACT_FLOAT_INT:
                col = col.astype(np.float64)
        elif isinstance(col.dtype, pd.BooleanDtype) and not col.isna().any():
            col = col.astype(bool)
        out[name] = col
    return pd.DataFrame(out, index=typed.index)


def evaluate(frame: pd.DataFrame, checks: list[Check]) -> dict[str, np.ndarray]:
    """The numpy pass over every GX check of a frame: check key -> bool mask of failing rows."""
    return {c.key: c.violations(frame[c.column]) for c in gx_checks(checks)}


def cross_check(run: GxRun, frame: pd.DataFrame, checks: list[Check]) -> dict[str, np.ndarray]:
    """Raise EngineMismatchError unless GX and the numpy pass fail exactly the same rows of `frame`."""
    masks = evaluate(frame, checks)
    for check in gx_checks(checks):
        ours = np.sort(np.asarray(frame.index[masks[check.key]]))
        theirs = np.sort(run.unexpected.get(check.key, np.array([])).astype(ours.dtype, copy=False))
        if len(ours) != len(theirs) or not np.array_equal(ours, theirs):
            only_ours = np.setdiff1d(ours, theirs)[:5].tolist()
            only_gx = np.setdiff1d(theirs, ours)[:5].tolist()
            raise EngineMismatchError(
                f"{check.label}: GX found {len(theirs)} failing rows, the numpy pass {len(ours)} "
                f"(rows only numpy flags: {only_ours}; only GX: {only_gx}; run {run.run_name})"
            )
    return masks


def _raised(info) -> str | None:
    """GX's exception_info is either one dict or a dict of them keyed by metric: the first error, if any."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _url_to_path(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else url
