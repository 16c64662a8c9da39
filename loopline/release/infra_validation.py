"""Infra validation: can this model version be loaded and called the way serving will call it?

Like TFX's InfraValidator, in a process of its own: a fork of a warm template (loopline.release.infra_template)
that has imported the serving stack but never a model, so each validation starts from the same clean state
and a crash, a hang or a model's import side effects stay out of the caller and out of the next validation.
The child loads the version with the model server's own loader (`loopline.serving.model.load_bundle_model`,
what `loopline serve` runs) and sends it the sample rows as a real request body would arrive: a
`dataframe_split` JSON body through `parse_body`, the server's contract checks (`InputChecker`), `score` and
`encode_predictions`. The rows come from the contract: real held-out rows plus edge rows (every category
value, numeric bounds, nulls where the contract allows them). Any exception, a crash, a timeout, a row the
server would refuse, or outputs of the wrong length, type or range fail validation, with the error as the
reason. With `evaluation.infra_pyfunc_check` the child also loads the model with `mlflow.pyfunc.load_model`
(the loader of `mlflow models serve`; it imports mlflow, ~2 s or more) and holds its predictions to the
server's.

Nothing is loaded before the loader gate (loopline.packaging.safe_load) has read the version's MLmodel: the
caller refuses a model that needs unpickling or code from the artifact and downloads only the bundle
(weights for `torch.load(weights_only=True)`, JSON, YAML; the whole model directory, gated again on disk, for
the pyfunc check). A model logged before the loader-module format has its bundle loaded the same way (its
pickle is never read, and the pyfunc check is skipped for it: that loader would unpickle).
"""

from __future__ import annotations

import json
import os
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
    pyfunc: bool = False,
    verdicts=None,
    nice: int = 0,
) -> dict[str, Any]:
    """Load and score in a fork of the warm template. Returns {"ok", "reason", "rows", "seconds", "loader",
    ...}; never raises. A version the loader gate refuses fails at once, with the refusal as the reason.
    `verdicts` (loopline.packaging.safe_load.GateVerdicts): the gate's verdicts of the caller's decision.
    `nice`: added to the child's niceness (os.nice), for a validation that runs beside the caller's work."""
    from loopline.errors import ModelError
    from loopline.packaging.registry import registry_client
    from loopline.packaging.safe_load import FORMAT_LEGACY, check_version

    started = time.perf_counter()
    try:
        model, version = parse_version_uri(model_uri)
        if verdicts is not None and verdicts.tracking_uri == tracking_uri:
            gated = verdicts.gate(model, version)
            plan, root = gated.plan, gated.root
        else:
            client = registry_client(tracking_uri)
            plan, root = check_version(client, model, version, tracking_uri=tracking_uri)
    except ModelError as exc:
        return _result(False, str(exc), started, rows, {"loader": None, "refused": True})
    with tempfile.TemporaryDirectory(prefix="loopline-infra-") as tmp:
        try:
            bundle, pyfunc_dir = _download(plan, root, tmp, tracking_uri, pyfunc)
        except ModelError as exc:
            return _result(False, str(exc), started, rows, {"loader": plan.loader})
        return validate_bundle(
            bundle,
            rows,
            contract,
            model=model,
            version=version,
            timeout_s=timeout_s,
            python=python,
            pyfunc_dir=pyfunc_dir,
            legacy_loader=plan.loader if plan.format == FORMAT_LEGACY else None,
            started=started,
            nice=nice,
        )


def validate_bundle(
    bundle: str | os.PathLike,
    rows: pd.DataFrame,
    contract: Contract,
    *,
    model: str,
    version: str,
    timeout_s: float = 600.0,
    python: str | None = None,
    pyfunc_dir: str | None = None,
    legacy_loader: str | None = None,
    started: float | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """The validation of a bundle already downloaded and gated (`validate_infra`'s second half): a fork of
    the warm template loads it with the model server's loader and answers `rows` as a request. Never raises."""
    started = time.perf_counter() if started is None else started
    with tempfile.TemporaryDirectory(prefix="loopline-infra-run-") as tmp:
        workdir = Path(tmp)
        (workdir / "request.json").write_bytes(request_body(rows))
        if pyfunc_dir:
            rows.to_parquet(workdir / "rows.parquet", index=False)
        request = {
            "workdir": tmp,
            "bundle": str(bundle),
            "pyfunc_dir": pyfunc_dir,
            "model": model,
            "version": str(version),
            "task": contract.task,
            "classes": [str(c) for c in contract.classes or []],
            "legacy_loader": legacy_loader,
            "timeout_s": timeout_s,
            "env": _child_env(),
            "cwd": os.getcwd(),
            "nice": int(nice),
        }
        return _run(request, python, timeout_s, started, rows, f"models:/{model}/{version}")


def _download(plan, root: str, tmp: str, tracking_uri: str, pyfunc: bool) -> tuple[Path, str | None]:
    """(the bundle directory, the whole model directory for the pyfunc check or None), both gated."""
    import mlflow.artifacts

    from loopline.errors import ModelError
    from loopline.packaging.safe_load import FORMAT_LEGACY, check_local, download_bundle

    if not pyfunc or plan.format == FORMAT_LEGACY:  # the legacy loader would unpickle: bundle only
        return download_bundle(root, plan, Path(tmp) / "model", tracking_uri=tracking_uri), None
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=root, dst_path=str(Path(tmp) / "model"), tracking_uri=tracking_uri
        )
    except Exception as exc:
        raise ModelError(f"model {plan.model!r} version {plan.version}: cannot download: {exc}") from exc
    # the copy about to be loaded, not the one checked a moment ago: still the loader-module format
    if check_local(local, plan.model, plan.version).format != plan.format:
        raise ModelError(f"model {plan.model!r} version {plan.version} changed while it was being validated")
    return Path(local) / plan.bundle_path, local


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # a second lock behind the gate
    return env


def _run(request: dict, python: str | None, timeout_s: float, started: float, rows, model_uri: str) -> dict:
    from loopline.release.infra_template import TemplateError, template_for

    workdir = Path(request["workdir"])
    try:
        reply = template_for(python).validate(request, timeout_s)
    except TemplateError as exc:
        if "timed out" in str(exc):
            return _result(
                False, f"loading and scoring {model_uri} took longer than {timeout_s:.0f} s", started, rows
            )
        return _result(False, str(exc), started, rows)
    try:
        report = json.loads((workdir / "report.json").read_text())
    except (OSError, ValueError):
        report = None
    if report is None:
        try:
            tail = (workdir / "child.log").read_text(errors="replace").strip()[-ERROR_CHARS:]
        except OSError:
            tail = ""
        return _result(
            False, f"the validation process exited with code {reply.get('exit')}: {tail}", started, rows
        )
    report["template_wait_s"] = reply.get("template_wait_s")
    if not report.get("ok"):
        return _result(False, report.get("error", "unknown error"), started, rows, report)
    return _result(True, None, started, rows, report)


def request_body(rows: pd.DataFrame) -> bytes:
    """The rows as a client sends them: MLflow's `dataframe_split` JSON (nulls as null, ISO timestamps)."""
    split = rows.to_json(orient="split", index=False, date_format="iso", date_unit="us")
    return b'{"dataframe_split": ' + split.encode() + b"}"


def _result(
    ok: bool, reason: str | None, started: float, rows: pd.DataFrame, report: dict | None = None
) -> dict[str, Any]:
    out = {"ok": ok, "reason": None if reason is None else reason[:ERROR_CHARS], "rows": int(len(rows))}
    out["seconds"] = round(time.perf_counter() - started, 3)
    for key in ("loader", "refused", "load_s", "predict_s", "output_dtype", "template_wait_s"):
        if report and key in report:
            out[key] = report[key]
    return out


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


SERVING_LOADER = "loopline.serving.model.load_bundle_model"
PYFUNC_LOADER = "mlflow.pyfunc.load_model -> loopline.packaging.pyfunc"


def check_serving(
    bundle_dir: str | os.PathLike, body: bytes, *, model: str, version: str, task: str, classes: list[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """What `loopline serve` does with this version and this request body: load, parse, check, score,
    encode. Returns (predictions, timings); raises on anything serving would fail or answer wrongly."""
    from loopline.serving.model import load_bundle_model
    from loopline.serving.protocol import RequestError, encode_predictions, parse_body

    t0 = time.perf_counter()
    loaded = load_bundle_model(
        bundle_dir, name=model, version=version, alias="infra-validation", device="cpu"
    )
    t1 = time.perf_counter()
    try:
        cols = parse_body(body)
        predictions = loaded.score(loaded.checker.check(cols))
    except RequestError as exc:
        raise ValueError(
            f"the server would answer {exc.status} to the sample rows: {exc.message} {exc.fields[:5]}"
        ) from exc
    encode_predictions(predictions)
    t2 = time.perf_counter()
    check_outputs(predictions, cols.n_rows, task, classes)
    return predictions, {"load_s": round(t1 - t0, 3), "predict_s": round(t2 - t1, 3)}


def check_pyfunc(
    model_dir: str, rows: pd.DataFrame, served: np.ndarray, task: str, classes: list[str]
) -> None:
    """`mlflow.pyfunc.load_model` (the loader of `mlflow models serve`) must agree with the model server."""
    import mlflow.pyfunc

    predictions = mlflow.pyfunc.load_model(model_dir).predict(rows)
    check_outputs(predictions, len(rows), task, classes)
    values = np.asarray(predictions)
    same = (
        np.array_equal(values.astype(str), served.astype(str))
        if task == "multiclass"
        else np.allclose(values.astype(np.float64), served.astype(np.float64), rtol=1e-5, atol=1e-6)
    )
    if not same:
        raise ValueError(
            "mlflow.pyfunc.load_model predicts differently from the model server on the same rows"
        )


def run_child(request: dict[str, Any]) -> int:
    """In the forked child (loopline.release.infra_template): gate the local copy, validate, write
    report.json. Returns the exit code."""
    workdir = Path(request["workdir"])
    try:
        import torch

        torch.set_num_threads(1)  # a few dozen rows: a thread pool would cost more to start than it saves
        body = (workdir / "request.json").read_bytes()
        predictions, timings = check_serving(
            request["bundle"],
            body,
            model=request["model"],
            version=str(request["version"]),
            task=request["task"],
            classes=request["classes"],
        )
        loader = SERVING_LOADER
        if request.get("legacy_loader"):
            loader += " (legacy pickle not loaded)"
        if request.get("pyfunc_dir"):
            t0 = time.perf_counter()
            rows = pd.read_parquet(workdir / "rows.parquet")
            check_pyfunc(request["pyfunc_dir"], rows, predictions, request["task"], request["classes"])
            timings["pyfunc_s"] = round(time.perf_counter() - t0, 3)
            loader += f" + {PYFUNC_LOADER}"
        report = {"ok": True, "rows": int(len(predictions)), "loader": loader, **timings}
        report["output_dtype"] = str(getattr(predictions, "dtype", type(predictions).__name__))
    except BaseException as exc:  # everything, SystemExit included: the reason must reach the caller
        report = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}
    (workdir / "report.json.tmp").write_text(json.dumps(report))
    os.replace(workdir / "report.json.tmp", workdir / "report.json")
    return 0 if report["ok"] else 1
