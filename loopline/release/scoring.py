"""Score a candidate model version and the current champion on the same held-out rows, and compare them.

Both models score the raw contract rows of the candidate's test split (loopline.release.testset), each
through its own bundled transform, so a champion trained on an older transform is still judged on exactly
the same rows. Reported: every metric of the task, the same per slice of each categorical column, and a
paired bootstrap interval of candidate - champion on the primary metric. Pure computation and reads:
nothing here moves an alias (see loopline.release.promotion).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from loopline.config import LifecycleConfig
from loopline.data.contract_registry import contract_version_of
from loopline.data.contracts import Contract
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
from loopline.release.cache import ComputeCache
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


def score_version(model: str, version: int, test: TestSet, *, tracking_uri: str) -> np.ndarray:
    """Model outputs on the test rows: binary P(positive) [n], multiclass probabilities [n, k], regression [n]."""
    key = (tracking_uri, model, int(version), test.dataset, test.features_version)
    return _scores.get_or_compute(key, lambda: _score(f"models:/{model}/{version}", test, tracking_uri))


def _score(model_uri: str, test: TestSet, tracking_uri: str) -> np.ndarray:
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise ModelError(f"{model_uri} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    predictor = getattr(_unwrap(pyfunc), "predictor", None)
    task = test.contract.task
    chunks = []
    for start in range(0, len(test.frame), SCORE_CHUNK_ROWS):
        part = test.frame.iloc[start : start + SCORE_CHUNK_ROWS]
        if predictor is not None and hasattr(predictor, "predict_proba"):
            # a loopline bundle: probabilities straight from its Predictor
            out = predictor.predict_proba(part) if task == "multiclass" else predictor.predict(part)
        else:
            out = _foreign_outputs(pyfunc.predict(part), test.contract)
        chunks.append(np.asarray(out, dtype=np.float64))
    outputs = np.concatenate(chunks) if chunks else np.empty(0)
    expected = (
        (len(test.frame), len(test.contract.classes or [])) if task == "multiclass" else (len(test.frame),)
    )
    if outputs.shape != expected or not np.isfinite(outputs).all():
        raise ModelError(
            f"{model_uri} returned outputs of shape {outputs.shape} (expected {expected}) or non-finite values"
        )
    return outputs


def _unwrap(pyfunc):
    try:
        return pyfunc.unwrap_python_model()
    except Exception:  # not a python_model flavor (e.g. a sklearn model registered by hand)
        return None


def _foreign_outputs(predictions, contract: Contract) -> np.ndarray:
    """Any other pyfunc: binary/regression take its numbers as they are; multiclass labels become one-hot."""
    values = np.asarray(predictions.iloc[:, 0] if isinstance(predictions, pd.DataFrame) else predictions)
    if contract.task != "multiclass":
        return values.astype(np.float64).reshape(-1)
    classes = [str(c) for c in contract.classes or []]
    index = {c: i for i, c in enumerate(classes)}
    onehot = np.zeros((len(values), len(classes)))
    onehot[np.arange(len(values)), [index.get(str(v), 0) for v in values]] = 1.0
    return onehot


# -- evaluation -------------------------------------------------------------------------------------


def evaluate_versions(
    cfg: LifecycleConfig,
    model: str | None = None,
    candidate_version: int | None = None,
    *,
    lake: Lake,
    tracking_uri: str | None = None,
    champion_version: int | None = -1,
) -> dict[str, Any]:
    """Metrics of the candidate and the champion on the candidate's test split, slices and the bootstrap CI.

    `candidate_version` None: the newest version. `champion_version` -1: whatever `@champion` points at now;
    None: evaluate the candidate alone. Returns a JSON-able dict (the CLI's `evaluate --json`).
    """
    started = time.perf_counter()
    tracking_uri = tracking_uri_for(cfg, tracking_uri)
    client = registry_client(tracking_uri)
    model = model or model_name_for(cfg)
    if candidate_version is None:
        candidate_version = newest_version(client, model)
    cand_info = version_info(client, model, int(candidate_version))
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

    cand_out = score_version(model, int(candidate_version), test, tracking_uri=tracking_uri)
    champ_out, champion_error = None, None
    if champion_version is not None:
        try:
            champ_out = score_version(model, int(champion_version), test, tracking_uri=tracking_uri)
        except ContractError as exc:  # the contract changed: the champion cannot read the new rows
            champion_error = str(exc)
    t_score = time.perf_counter()

    metrics = compute_metrics(task, test.y, cand_out)
    champion_metrics = compute_metrics(task, test.y, champ_out) if champ_out is not None else None
    ci = None
    if champ_out is not None:
        ci = bootstrap_difference(
            primary,
            task,
            test.y,
            cand_out,
            champ_out,
            samples=cfg.evaluation.bootstrap_samples,
            seed=cfg.evaluation.seed,
        )
    slices = slice_metrics(test, cand_out, champ_out, primary, min_rows=cfg.evaluation.min_slice_rows)
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
        values = test.frame[column]
        keys = values.astype(object).where(values.notna(), NULL_SLICE).astype(str).to_numpy()
        for value in sorted(set(keys)):
            mask = keys == value
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
