"""Infra validation: can this model version be loaded and called the way serving will call it?

Like TFX's InfraValidator: a FRESH Python process (nothing cached, nothing already imported) loads
`models:/M/V` and scores sample rows built from the contract: real held-out rows plus edge rows (every
category value, numeric bounds, nulls where the contract allows them). Any exception, a crash, a timeout,
or outputs of the wrong length, type or range fail validation, with the error as the reason.

Nothing is loaded before the loader gate (loopline.packaging.safe_load) has read the version's MLmodel: the
parent refuses a model that needs unpickling or code from the artifact without starting a process, and the
child gates its own downloaded copy again before loading it. A loopline model is then loaded with
`mlflow.pyfunc.load_model` on that copy (the loader of `mlflow models serve`, which imports only the
installed `loopline.packaging.pyfunc`); a model logged before that format has its bundle loaded directly
(its pickle is never read). The result names the loader.

    python -m loopline.release.infra_validation MODEL_URI ROWS.parquet TASK [CLASSES_JSON]

prints one JSON line: {"ok": true, "rows": n, "loader": ..., "load_s": ..., "predict_s": ...} or
{"ok": false, "error": ...}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.data.contracts import Contract

EDGE_TIMESTAMP = pd.Timestamp("2024-01-01 00:00:00")
ERROR_CHARS = 2000  # the reason goes into tags and JSON: the start of a traceback is what helps


def sample_rows(contract: Contract, real: pd.DataFrame | None, n_real: int) -> pd.DataFrame:
    """Feature columns only: up to n_real real rows, then edge rows that stay inside the contract."""
    columns = contract.feature_columns
    base = real[columns].head(n_real).reset_index(drop=True) if real is not None and len(real) else None
    # enough rows for every category value plus a null row (the last) where the column is nullable
    n_edge = max(
        [3] + [len(contract.columns[c].values or []) + contract.columns[c].nullable for c in columns]
    )
    edge: dict[str, list[Any]] = {}
    for name in columns:
        spec = contract.columns[name]
        if base is not None and len(base):
            first = base[name].iloc[0]
            default = None if pd.isna(first) else first
        else:
            default = None
        if default is None:
            default = _default_value(spec)
        values = [default] * n_edge
        if spec.values:
            values = [spec.values[i % len(spec.values)] for i in range(n_edge)]
        if spec.is_numeric:
            if spec.min is not None:
                values[0] = spec.min
            if spec.max is not None:
                values[1] = spec.max
            values = [int(v) if spec.type == "int" and v is not None else v for v in values]
        if spec.nullable:
            values[-1] = None
        edge[name] = values
    edge_frame = pd.DataFrame(edge)
    for name in columns:
        spec = contract.columns[name]
        if spec.type == "float" or (spec.type == "int" and spec.nullable):
            edge_frame[name] = pd.to_numeric(edge_frame[name], errors="coerce").astype(np.float64)
        elif spec.type == "int":
            edge_frame[name] = edge_frame[name].astype(np.int64)
        elif spec.type == "timestamp":
            edge_frame[name] = pd.to_datetime(edge_frame[name])
            if base is not None and name in base:
                edge_frame[name] = edge_frame[name].astype(base[name].dtype)
    if base is None:
        return edge_frame
    return pd.concat([base, edge_frame.astype(base.dtypes.to_dict(), errors="ignore")], ignore_index=True)


def _default_value(spec) -> Any:
    if spec.values:
        return spec.values[0]
    if spec.type == "int":
        return int(spec.min) if spec.min is not None else 0
    if spec.type == "float":
        return float(spec.min) if spec.min is not None else 0.0
    if spec.type == "bool":
        return False
    if spec.type == "timestamp":
        return EDGE_TIMESTAMP
    return ""


def validate_infra(
    model_uri: str,
    rows: pd.DataFrame,
    contract: Contract,
    *,
    tracking_uri: str,
    timeout_s: float = 600.0,
    python: str | None = None,
) -> dict[str, Any]:
    """Load and score in a fresh process. Returns {"ok", "reason", "rows", "seconds", "loader", ...}; never
    raises. A version the loader gate refuses fails at once, with the refusal as the reason."""
    from loopline.errors import ModelError
    from loopline.packaging.registry import registry_client
    from loopline.packaging.safe_load import check_version

    started = time.perf_counter()
    try:
        model, version = parse_version_uri(model_uri)
        check_version(registry_client(tracking_uri), model, version, tracking_uri=tracking_uri)
    except ModelError as exc:
        return _result(False, str(exc), started, rows, {"loader": None, "refused": True})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # a second lock behind the gate
    with tempfile.TemporaryDirectory(prefix="loopline-infra-") as tmp:
        path = Path(tmp) / "rows.parquet"
        rows.to_parquet(path, index=False)
        cmd = [
            python or sys.executable,
            "-m",
            "loopline.release.infra_validation",
            model_uri,
            str(path),
            contract.task,
        ]
        cmd.append(json.dumps([str(c) for c in contract.classes or []]))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return _result(
                False, f"loading and scoring {model_uri} took longer than {timeout_s:.0f} s", started, rows
            )
    report = _last_json(proc.stdout)
    if report is None:
        tail = (proc.stderr or proc.stdout or "").strip()[-ERROR_CHARS:]
        return _result(
            False, f"the validation process exited with code {proc.returncode}: {tail}", started, rows
        )
    if not report.get("ok"):
        return _result(False, report.get("error", "unknown error"), started, rows, report)
    return _result(True, None, started, rows, report)


def _result(
    ok: bool, reason: str | None, started: float, rows: pd.DataFrame, report: dict | None = None
) -> dict[str, Any]:
    out = {"ok": ok, "reason": None if reason is None else reason[:ERROR_CHARS], "rows": int(len(rows))}
    out["seconds"] = round(time.perf_counter() - started, 3)
    for key in ("loader", "refused", "load_s", "predict_s", "output_dtype"):
        if report and key in report:
            out[key] = report[key]
    return out


def _last_json(text: str) -> dict | None:
    for line in reversed((text or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "ok" in value:
            return value
    return None


def check_outputs(predictions: Any, n_rows: int, task: str, classes: list[str]) -> None:
    """Raise ValueError when outputs do not look like what serving must return for this task."""
    values = np.asarray(predictions.iloc[:, 0] if isinstance(predictions, pd.DataFrame) else predictions)
    if values.ndim != 1 or len(values) != n_rows:
        raise ValueError(f"predict returned shape {values.shape} for {n_rows} rows (expected ({n_rows},))")
    if task == "multiclass":
        unknown = sorted({str(v) for v in values} - set(classes))
        if classes and unknown:
            raise ValueError(
                f"predict returned labels {unknown[:5]} outside the contract's classes {classes}"
            )
        return
    try:
        numbers = values.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"predict returned non-numeric values for a {task} model: {exc}") from exc
    if not np.isfinite(numbers).all():
        raise ValueError(f"predict returned {int((~np.isfinite(numbers)).sum())} non-finite value(s)")
    if task == "binary" and ((numbers < 0) | (numbers > 1)).any():
        raise ValueError("predict returned values outside [0, 1] for a binary model (expected P(positive))")


def parse_version_uri(model_uri: str) -> tuple[str, str]:
    """`models:/NAME/VERSION` -> (NAME, VERSION). Infra validation names versions, never aliases."""
    from loopline.errors import ModelError

    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    if not model_uri.startswith("models:/") or not name or not version.isdigit():
        raise ModelError(f"{model_uri!r} is not a models:/NAME/VERSION URI")
    return name, version


def load_for_validation(model_uri: str, tracking_uri: str | None, workdir: str) -> tuple[Any, str]:
    """Gate, download and load as serving will: (a model with `predict`, the loader's name)."""
    import mlflow.artifacts

    from loopline.errors import ModelError
    from loopline.packaging.bundle import load_predictor
    from loopline.packaging.registry import registry_client, tracking_uri_for
    from loopline.packaging.safe_load import FORMAT_LEGACY, check_local, check_version, download_bundle

    tracking_uri = tracking_uri_for(None, tracking_uri)
    client = registry_client(tracking_uri)
    model, version = parse_version_uri(model_uri)
    plan, root = check_version(client, model, version, tracking_uri=tracking_uri)
    if plan.format == FORMAT_LEGACY:
        bundle = download_bundle(root, plan, workdir, tracking_uri=tracking_uri)
        return load_predictor(bundle, device="cpu"), plan.loader
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=root, dst_path=workdir, tracking_uri=tracking_uri
    )
    # the copy about to be loaded, not the one checked a moment ago: still the loader-module format
    if check_local(local, model, version).format != plan.format:
        raise ModelError(f"model {model!r} version {version} changed while it was being validated")
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(local), f"mlflow.pyfunc.load_model -> {plan.loader}"


def main(argv: list[str]) -> int:
    """The fresh process: gate, load, score, check, print one JSON line."""
    model_uri, rows_path, task = argv[0], argv[1], argv[2]
    classes = json.loads(argv[3]) if len(argv) > 3 else []
    try:
        rows = pd.read_parquet(rows_path)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="loopline-infra-model-") as workdir:
            model, loader = load_for_validation(model_uri, os.environ.get("MLFLOW_TRACKING_URI"), workdir)
            t1 = time.perf_counter()
            predictions = model.predict(rows)
            t2 = time.perf_counter()
        check_outputs(predictions, len(rows), task, classes)
    except BaseException as exc:  # everything, SystemExit included: the reason must reach the parent
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}), flush=True)
        return 1
    dtype = str(getattr(predictions, "dtype", type(predictions).__name__))
    print(
        json.dumps(
            {
                "ok": True,
                "rows": len(rows),
                "loader": loader,
                "load_s": round(t1 - t0, 3),
                "predict_s": round(t2 - t1, 3),
                "output_dtype": dtype,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
