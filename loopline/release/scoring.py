"""Score a candidate model version and the current champion on the same held-out rows, and compare them.

Both models score the raw contract rows of the candidate's test split (loopline.release.testset), each
through its own bundled transform, so a champion trained on an older transform is still judged on exactly
the same rows. Reported: every metric of the task, the same per slice of each categorical column, and a
paired bootstrap interval of candidate - champion on the primary metric. Pure computation and reads:
nothing here moves an alias (see loopline.release.promotion).

Every version is loaded through the loader gate (loopline.packaging.safe_load): only a loopline bundle, never
a pickle or code from the artifact. A pyfunc registered by hand (a custom PythonModel, an sklearn model) is
refused with a ModelError saying why.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from loopline.cache import ComputeCache
from loopline.config import LifecycleConfig
from loopline.data.contract_registry import contract_version_of
from loopline.errors import ContractError, ModelError
from loopline.packaging.registry import (
    alias_version,
    contract_dataset,
    model_name_for,
    newest_version,
    registry_client,
    tracking_uri_for,
    version_info,
)
from loopline.packaging.safe_load import GateVerdicts, ModelRefused
from loopline.release.background import in_background
from loopline.release.champion import CHAMPION
from loopline.release.metrics import (
    HIGHER_IS_BETTER,
    bootstrap_difference,
    compute_metrics,
    improvement,
    metric_names,
    prepare_metric,
    primary_metric_for,
)
from loopline.release.testset import TestSet, clear_test_sets, read_test_set
from loopline.storage.lake import Lake

log = logging.getLogger(__name__)

SCORE_CHUNK_ROWS = 250_000  # rows per model call: bounds the transform's float32 matrix to ~40 MB
NULL_SLICE = "(null)"
_CACHE_ENTRIES = 16

_scores = ComputeCache(_CACHE_ENTRIES)


# -- scoring ----------------------------------------------------------------------------------------


def score_version(
    model: str, version: int, test: TestSet, *, tracking_uri: str, verdicts: GateVerdicts | None = None
) -> np.ndarray:
    """Model outputs on the test rows: binary P(positive) [n], multiclass probabilities [n, k], regression [n].
    `verdicts`: the loader gate's verdicts of the decision this scoring is part of (checked once per version)."""
    return _scored(model, version, test, tracking_uri, verdicts)[0]


def _scored(
    model: str, version: int, test: TestSet, tracking_uri: str, verdicts: GateVerdicts | None = None
) -> tuple[np.ndarray, str]:
    """(outputs, the loader that loaded the version), cached per version and test split."""
    key = (tracking_uri, model, int(version), test.dataset, test.features_version)
    return _scores.get_or_compute(key, lambda: _score(model, int(version), test, tracking_uri, verdicts))


def _score(
    model: str, version: int, test: TestSet, tracking_uri: str, verdicts: GateVerdicts | None
) -> tuple[np.ndarray, str]:
    """Load through the loader gate (never a pickle, never code from the artifact) and score in chunks."""
    from loopline.packaging.safe_load import load_version

    try:
        predictor, plan = load_version(model, version, tracking_uri=tracking_uri, verdicts=verdicts)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"model {model!r} version {version} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    task = test.contract.task
    chunks = []
    for start in range(0, len(test.frame), SCORE_CHUNK_ROWS):
        part = test.frame.iloc[start : start + SCORE_CHUNK_ROWS]
        out = predictor.predict_proba(part) if task == "multiclass" else predictor.predict(part)
        chunks.append(np.asarray(out, dtype=np.float64))
    outputs = np.concatenate(chunks) if chunks else np.empty(0)
    expected = (
        (len(test.frame), len(test.contract.classes or [])) if task == "multiclass" else (len(test.frame),)
    )
    if outputs.shape != expected or not np.isfinite(outputs).all():
        raise ModelError(
            f"model {model!r} version {version} returned outputs of shape {outputs.shape} "
            f"(expected {expected}) or non-finite values"
        )
    return outputs, plan.loader


# -- evaluation -------------------------------------------------------------------------------------


def evaluate_versions(
    cfg: LifecycleConfig,
    model: str | None = None,
    candidate_version: int | None = None,
    *,
    lake: Lake,
    tracking_uri: str | None = None,
    champion_version: int | None = -1,
    candidate_info: dict[str, Any] | None = None,
    verdicts: GateVerdicts | None = None,
) -> dict[str, Any]:
    """Metrics of the candidate and the champion on the candidate's test split, slices and the bootstrap CI.

    `candidate_version` None: the newest version. `champion_version` -1: whatever `@champion` points at now;
    None: evaluate the candidate alone. `candidate_info`: the candidate's `version_info` when the caller has
    read it already (its run's tags: what it was trained on). `verdicts`: the loader gate's verdicts of the
    caller's decision (loopline.packaging.safe_load.GateVerdicts), so each version is judged once; by
    default one set for this evaluation. Returns a JSON-able dict (the CLI's
    `evaluate --json`).
    """
    started = time.perf_counter()
    tracking_uri = tracking_uri_for(cfg, tracking_uri)
    client = registry_client(tracking_uri)
    if verdicts is None:
        verdicts = GateVerdicts(client, tracking_uri)
    model = model or model_name_for(cfg)
    if candidate_version is None:
        candidate_version = newest_version(client, model)
    cand_info = (
        candidate_info
        if candidate_info is not None and candidate_info["version"] == int(candidate_version)
        else version_info(client, model, int(candidate_version))
    )
    if champion_version == -1:
        champion_version = alias_version(client, model, CHAMPION)
    dataset = cand_info["dataset"] or contract_dataset(cfg)
    if cand_info["features_version"] is None:
        raise ModelError(
            f"model {model!r} version {candidate_version}: its run records no data.features_version, "
            "so there is no held-out split to evaluate it on"
        )
    test = read_test_set(lake, dataset, cand_info["features_version"])
    task = test.contract.task
    primary = primary_metric_for(task, cfg.evaluation.primary_metric)
    t_read = time.perf_counter()

    cand_out, cand_loader = _scored(model, int(candidate_version), test, tracking_uri, verdicts)
    champ_out, champion_error = None, None
    if champion_version is not None:
        try:
            champ_out = score_version(
                model, int(champion_version), test, tracking_uri=tracking_uri, verdicts=verdicts
            )
        except (ContractError, ModelRefused) as exc:
            # the contract changed and the champion cannot read the new rows, or the loader gate refuses the
            # champion (a model registered by hand): the candidate is judged on its own
            champion_error = str(exc)
    t_score = time.perf_counter()

    # the bootstrap (most of the metrics' time, numpy work that releases the GIL) runs in a thread of its
    # own while this one computes the metrics and the slices: the two overlap on a second core
    ci_job = None
    if champ_out is not None:
        ci_job = in_background(
            lambda: bootstrap_difference(
                primary,
                task,
                test.y,
                cand_out,
                champ_out,
                samples=cfg.evaluation.bootstrap_samples,
                seed=cfg.evaluation.seed,
            ),
            f"bootstrap-{model}",
        )
    metrics = compute_metrics(task, test.y, cand_out)
    champion_metrics = compute_metrics(task, test.y, champ_out) if champ_out is not None else None
    slices = slice_metrics(test, cand_out, champ_out, primary, min_rows=cfg.evaluation.min_slice_rows)
    ci = ci_job.result() if ci_job is not None else None
    t_metrics = time.perf_counter()
    return {
        "model": model,
        "candidate_version": int(candidate_version),
        "champion_version": None if champion_version is None else int(champion_version),
        "champion_error": champion_error,
        "dataset": dataset,
        "task": task,
        "primary_metric": primary,
        "higher_is_better": HIGHER_IS_BETTER[primary],
        "rows": int(len(test.y)),
        "metrics": metrics,
        "champion_metrics": champion_metrics,
        "improvement": (
            improvement(primary, metrics[primary], champion_metrics[primary]) if champion_metrics else None
        ),
        "ci": ci,
        "slices": slices,
        "contract": {
            "dataset": test.contract.dataset,
            "id": test.contract.id,
            "label": test.contract.label,
            "task": task,
            "columns": {name: spec.type for name, spec in test.contract.columns.items()},
        },
        "data": {
            "features_version": test.features_version,
            "clean_version": test.clean_version,
            "transform_version": test.transform_version,
            "contract_hash": test.contract.hash,
            # the candidate's tag; for a model trained before training tagged it, the lake's number
            "contract_version": cand_info.get("contract_version")
            or contract_version_of(lake, dataset, test.contract.hash),
            "candidate_run_id": cand_info["run_id"],
            "candidate_loader": cand_loader,  # loopline.packaging.safe_load: never a pickle
            "candidate_features_version": cand_info["features_version"],
            "code_version": cand_info["code_version"],
        },
        "timings_s": {
            "read": round(t_read - started, 4),
            "score": round(t_score - t_read, 4),
            "metrics": round(t_metrics - t_score, 4),
            "total": round(t_metrics - started, 4),
        },
    }


def slice_metrics(
    test: TestSet, candidate: np.ndarray, champion: np.ndarray | None, primary: str, *, min_rows: int
) -> list[dict[str, Any]]:
    """Metrics per value of every categorical column (nulls are a slice of their own).

    A slice smaller than `min_rows` is reported but marked `judged: false`: a handful of rows says nothing."""
    task = test.contract.task
    out: list[dict[str, Any]] = []
    for column in test.contract.feature_columns:
        spec = test.contract.columns[column]
        if spec.type not in ("category", "bool"):
            continue
        # integer codes, not 20k strings compared once per slice; a value's slice is named by its text
        codes, uniques = pd.factorize(test.frame[column])
        codes = np.where(codes < 0, len(uniques), codes)  # nulls: a code of their own
        names = np.array([str(u) for u in uniques] + [NULL_SLICE], dtype=object)
        present = np.unique(codes)
        for value in sorted({names[c] for c in present}):
            mask = np.isin(codes, present[names[present] == value])
            rows = int(mask.sum())
            cand = _subset_metrics(task, test.y[mask], candidate[mask])
            champ = _subset_metrics(task, test.y[mask], champion[mask]) if champion is not None else None
            delta = improvement(primary, cand[primary], champ[primary]) if champ is not None else None
            out.append(
                {
                    "column": column,
                    "value": value,
                    "rows": rows,
                    "judged": rows >= min_rows and bool(np.isfinite(cand[primary])),
                    "metrics": cand,
                    "champion_metrics": champ,
                    "improvement": None if delta is None or not np.isfinite(delta) else float(delta),
                }
            )
    return out


def _subset_metrics(task: str, y: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    return {name: float(prepare_metric(name, task, y, outputs)(None)) for name in metric_names(task)}


def clear_caches() -> None:
    """Forget cached test sets and scores (tests and long-lived processes that rewrite a lake)."""
    clear_test_sets()
    _scores.clear()
