"""The loader gate: how loopline may load a registered model version, decided from its `MLmodel` alone.

Anyone who can write to the registry chooses what a model's artifact holds, and MLflow's own loaders run
whatever it names: a cloudpickled `python_model.pkl` executes its `__reduce__`, a `code/` directory goes on
`sys.path`, a `loader_module` is imported, models-from-code executes a Python file from the artifact,
sklearn and most other flavours unpickle. So scoring, infra validation and serving call this gate before
anything is loaded: it reads `MLmodel` with `yaml.safe_load` and accepts exactly two shapes:

- the loader-module format (`loopline.packaging.registry.log_and_register_bundle`): loader_module in
  `ALLOWED_LOADER_MODULES`, the bundle under `data/`, no code, no pickle, no other flavour. loopline loads
  the bundle with `load_predictor` (weights via `torch.load(weights_only=True)`, JSON, YAML);
  `mlflow.pyfunc.load_model` on it imports only the installed loopline.
- a model logged before that format: `python_model.pkl` + an `artifacts/bundle`. Its pickle is read as
  opcodes (`pickletools`, nothing executed) and must name nothing but loopline's `LooplineModel`, which is
  a thin wrapper of the bundle; the bundle is then loaded directly. The pickle and the copy of loopline's
  sources such a model carries (`code/`) are never loaded.

Everything else is refused with a `ModelError` naming the model, the version and the reason.
"""

from __future__ import annotations

import hashlib
import os
import pickletools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from loopline.cache import ComputeCache
from loopline.data.contracts import safe_yaml
from loopline.errors import ModelError
from loopline.packaging.registry import BUNDLE_ARTIFACT, registry_client

if TYPE_CHECKING:
    from loopline.packaging.bundle import Predictor

PYFUNC = "python_function"
ALLOWED_LOADER_MODULES = frozenset({"loopline.packaging.pyfunc"})
LEGACY_LOADER = "mlflow.pyfunc.model"  # MLflow's loader of a pickled PythonModel
# what the pickle of a pre-format loopline model names (the class by reference, MLflow's type-hint holder)
LEGACY_PICKLE_GLOBALS = frozenset(
    {
        ("loopline.pyfunc", "LooplineModel"),
        ("loopline.packaging.pyfunc", "LooplineModel"),
        ("mlflow.models.signature", "_TypeHints"),
    }
)
LEGACY_PICKLE_MAX_BYTES = 1 << 20  # a LooplineModel pickles to ~150 bytes
FORMAT_LOADER_MODULE = "loader_module"
FORMAT_LEGACY = "legacy_pickle"
HOW_TO_FIX = "register it with `loopline train` (weights + JSON, loaded by the installed loopline)"


@dataclass(frozen=True)
class LoadPlan:
    """How a version is loaded: its format, where its bundle sits in the artifact, and the loader (for
    the model card and the infra-validation result)."""

    model: str
    version: str
    format: str
    bundle_path: str  # relative to the model's artifact root: data/bundle, or artifacts/bundle (legacy)
    loader: str


class ModelRefused(ModelError):
    """The loader gate refused a version: loading it would unpickle or import code from the artifact."""


def refuse(model: str, version: Any, why: str) -> ModelRefused:
    return ModelRefused(
        f"model {model!r} version {version} is refused: {why}. loopline loads only models it can load "
        f"without unpickling or importing code from the registry; {HOW_TO_FIX}"
    )


def inspect_mlmodel(meta: Any, model: str, version: Any, read_file: Callable[[str], bytes]) -> LoadPlan:
    """The plan for a parsed `MLmodel`, or the refusal. `read_file(relpath)` returns a file of the artifact
    (only the legacy pickle is read, as bytes)."""
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    if not isinstance(flavors, dict) or not isinstance(flavors.get(PYFUNC), dict):
        raise refuse(model, version, "its MLmodel has no python_function flavour")
    others = sorted(str(f) for f in flavors if f != PYFUNC)
    if others:
        raise refuse(
            model,
            version,
            f"it carries the {', '.join(others)} flavour(s), which MLflow loads by unpickling or with "
            "their own code",
        )
    conf = flavors[PYFUNC]
    loader = conf.get("loader_module")
    if conf.get("model_code_path"):
        raise refuse(
            model, version, "it is a models-from-code model: loading executes a file from the artifact"
        )
    if loader == LEGACY_LOADER and conf.get("python_model"):
        # loopline's own models of before carry a copy of loopline (code/): it is never put on sys.path
        return _legacy_plan(conf, model, version, read_file)
    if conf.get("code"):
        raise refuse(
            model, version, f"it carries code ({conf['code']!r}, code_paths) that loading would import"
        )
    if loader in ALLOWED_LOADER_MODULES:
        if conf.get("python_model") or conf.get("cloudpickle_version"):
            raise refuse(model, version, "it names a python_model pickle beside loopline's loader module")
        if conf.get("predict_fn", "predict") != "predict":
            raise refuse(model, version, f"its predict_fn {conf.get('predict_fn')!r} is not `predict`")
        bundle = _inside(conf.get("data"), model, version, "data")
        return LoadPlan(model, str(version), FORMAT_LOADER_MODULE, bundle, loader)
    raise refuse(
        model,
        version,
        f"its loader module {loader!r} is not one loopline loads ({', '.join(sorted(ALLOWED_LOADER_MODULES))}):"
        " MLflow would import it",
    )


def _legacy_plan(conf: dict, model: str, version: Any, read_file: Callable[[str], bytes]) -> LoadPlan:
    pickle_path = _inside(conf.get("python_model"), model, version, "python_model")
    data = read_file(pickle_path)
    if len(data) > LEGACY_PICKLE_MAX_BYTES:
        raise refuse(model, version, f"its python_model pickle is {len(data)} bytes, not a LooplineModel")
    names = pickle_globals(data)
    foreign = sorted(f"{m}.{n}" for m, n in names - LEGACY_PICKLE_GLOBALS)
    if foreign or not any(n == "LooplineModel" for _, n in names):
        raise refuse(
            model,
            version,
            "it is a cloudpickled python_model that is not loopline's LooplineModel (its pickle names "
            f"{', '.join(foreign) or 'no LooplineModel'}); unpickling it would run that code",
        )
    artifact = (conf.get("artifacts") or {}).get(BUNDLE_ARTIFACT)
    if not isinstance(artifact, dict):
        raise refuse(model, version, "its python_model pickle has no bundle artifact to load instead")
    bundle = _inside(artifact.get("path"), model, version, "artifacts.bundle.path")
    return LoadPlan(
        model,
        str(version),
        FORMAT_LEGACY,
        bundle,
        "loopline.packaging.bundle.load_predictor (legacy pickle not loaded)",
    )


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle would import, read from its opcodes without executing anything.
    A name the scan cannot resolve (built from computed strings, the extension registry) is ("?", "?")."""
    found: set[tuple[str, str]] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # values pushed since the last opcode that consumed or built something
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("FRAME", "PROTO", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                top = pushed[-1] if pushed else None
                if name == "MEMOIZE":
                    memo[len(memo)] = top
                elif name != "FRAME" and name != "PROTO":
                    memo[arg] = top
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
                continue
            if isinstance(arg, str) and name.endswith(("UNICODE", "STRING", "UNICODE8")):
                pushed.append(arg)
                continue
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add((module, attr))
            elif name == "STACK_GLOBAL":
                pair = pushed[-2:]
                ok = len(pair) == 2 and all(isinstance(v, str) for v in pair)
                found.add((pair[0], pair[1]) if ok else ("?", "?"))
            elif name.startswith("EXT"):
                found.add(("?", "?"))
            pushed = []
    except Exception:  # not a pickle at all: nothing loopline can vouch for
        found.add(("?", "?"))
    return found


def _inside(value: Any, model: str, version: Any, key: str) -> str:
    """A path of the MLmodel, kept inside the model directory (no absolute path, no `..`)."""
    if not isinstance(value, str) or not value.strip():
        raise refuse(model, version, f"its MLmodel has no usable {key} path")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or os.path.isabs(value):
        raise refuse(model, version, f"its {key} path {value!r} points outside the model directory")
    return str(path)


# -- where the artifact is: a local directory or the registry -----------------------------------------


def check_local(model_dir: str | os.PathLike, model: str, version: Any) -> LoadPlan:
    """The gate on a model directory already on disk (read MLmodel and, for a legacy model, its pickle)."""
    root = Path(model_dir)
    try:
        meta = safe_yaml((root / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise refuse(model, version, f"its MLmodel cannot be read: {exc}") from exc
    return inspect_mlmodel(meta, model, version, lambda rel: (root / rel).read_bytes())


@dataclass(frozen=True)
class GatedVersion:
    """A version the gate passed: its plan, the artifact root to fetch the bundle from, and what was judged
    (the registry's download URI and the sha256 of the `MLmodel` bytes that were read)."""

    plan: LoadPlan
    root: str
    mlmodel_sha256: str


def check_version(client, model: str, version: Any, *, tracking_uri: str) -> tuple[LoadPlan, str]:
    """The gate on a registered version: downloads only `MLmodel` (and a legacy model's small pickle).
    Returns the plan and the artifact root URI to fetch the bundle from."""
    gated = gate_version(client, model, version, tracking_uri=tracking_uri)
    return gated.plan, gated.root


def gate_version(client, model: str, version: Any, *, tracking_uri: str) -> GatedVersion:
    """`check_version`, keeping the digest of the `MLmodel` it judged."""
    from mlflow.exceptions import MlflowException

    try:
        root = client.get_model_version_download_uri(model, str(version)).rstrip("/")
    except MlflowException as exc:
        raise ModelError(f"model {model!r} has no version {version}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="loopline-gate-") as tmp:

        def read(rel: str) -> bytes:
            return _download(f"{root}/{rel}", tmp, tracking_uri, model, version).read_bytes()

        return gate_artifacts(root, model, version, read)


def gate_artifacts(root: str, model: str, version: Any, read: Callable[[str], bytes]) -> GatedVersion:
    """The gate on the version whose artifacts are at `root`, each file read with `read(relative path)`
    (MLflow's client, or loopline.serving.light_registry in a model server)."""
    mlmodel = read("MLmodel")
    try:
        meta = safe_yaml(mlmodel)
    except yaml.YAMLError as exc:
        raise refuse(model, version, f"its MLmodel is not YAML: {exc}") from exc
    plan = inspect_mlmodel(meta, model, version, read)
    return GatedVersion(plan, root, hashlib.sha256(mlmodel).hexdigest())


class GateVerdicts:
    """The gate's verdicts within one promotion (or one evaluation): each (model, version) is read and judged
    once, and every later load of it in that scope (infra validation, scoring the candidate, scoring the
    champion) downloads only its bundle, on that verdict. A refusal is kept too: the refused version is
    neither downloaded nor loaded again.

    Scoped to the one decision that creates it, never a process-wide cache: registry versions are not
    immutable (a run's artifacts can be rewritten), so the next promotion or evaluation judges the artifact
    afresh. Within the scope, what a reused verdict loads is the bundle directory alone, through
    `load_predictor` (weights with `torch.load(weights_only=True)`, JSON, YAML): an `MLmodel` rewritten in
    the meantime cannot make it unpickle or import anything, and a full model directory (infra validation's
    pyfunc check) is gated again on disk before MLflow loads it."""

    def __init__(self, client, tracking_uri: str):
        self.client = client
        self.tracking_uri = tracking_uri
        # threads asking at once (scoring prefetch, infra validation) share one check
        self._verdicts = ComputeCache(256)

    def gate(self, model: str, version: Any) -> GatedVersion:
        """The verdict on `model` version `version`: judged on the first call, raised or returned after."""

        def judge() -> GatedVersion | ModelRefused:
            try:
                return gate_version(self.client, model, version, tracking_uri=self.tracking_uri)
            except ModelRefused as exc:  # other errors (registry, download) are not verdicts: asked again
                return exc

        verdict = self._verdicts.get_or_compute((model, str(version)), judge)
        if isinstance(verdict, ModelRefused):
            raise verdict
        return verdict


def fetch_bundle(
    client,
    model: str,
    version: Any,
    dst: str | os.PathLike,
    *,
    tracking_uri: str,
    verdicts: GateVerdicts | None = None,
) -> tuple[Path, LoadPlan]:
    """Gate the version (or take `verdicts`' verdict on it), then download only its bundle directory into
    `dst`. Returns (bundle dir, plan)."""
    if verdicts is not None and verdicts.tracking_uri == tracking_uri:
        gated = verdicts.gate(model, version)
        plan, root = gated.plan, gated.root
    else:
        plan, root = check_version(client, model, version, tracking_uri=tracking_uri)
    return download_bundle(root, plan, dst, tracking_uri=tracking_uri), plan


def download_bundle(
    root: str,
    plan: LoadPlan,
    dst: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    download_dir: Callable[[str, str], Path] | None = None,
) -> Path:
    """The bundle directory of a gated version (`check_version`'s plan and root), downloaded into `dst`
    through MLflow (`tracking_uri`), or with `download_dir(artifact uri, dst)` (a model server's light
    registry reader: loopline.serving.registry_source)."""
    uri = f"{root}/{plan.bundle_path}"
    if download_dir is None:
        path = _download(uri, str(dst), tracking_uri, plan.model, plan.version)
    else:
        path = download_dir(uri, str(dst))
    if not (path / "bundle.json").is_file():
        raise ModelError(
            f"model {plan.model!r} version {plan.version} is not a loopline bundle (no bundle.json)"
        )
    return path


def load_version(
    model: str,
    version: Any,
    *,
    tracking_uri: str,
    device: str = "cpu",
    verdicts: GateVerdicts | None = None,
) -> tuple[Predictor, LoadPlan]:
    """The gate (or `verdicts`' verdict), then the bundle's Predictor (everything is read into memory; the
    download is removed)."""
    from loopline.packaging.bundle import load_predictor

    same_registry = verdicts is not None and verdicts.tracking_uri == tracking_uri
    client = verdicts.client if same_registry else registry_client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="loopline-load-") as tmp:
        bundle, plan = fetch_bundle(client, model, version, tmp, tracking_uri=tracking_uri, verdicts=verdicts)
        return load_predictor(bundle, device=device), plan


# (tracking uri, artifact root) -> MLflow's artifact repository there. MLflow builds a repository, with a thread
# pool of its own, on every download: a promotion (the gate, infra validation, two scorings) paid ~8 thread
# starts on its critical path. Kept, the pool's threads serve the next download. A repository holds where
# the artifacts are, never what they are: every download still lists and copies the files afresh. A few
# roots (a promotion touches two): each kept repository keeps its idle threads (up to 2 per core, at most 8).
_artifact_repos = ComputeCache(8)


def _artifact_repo(root_uri: str, tracking_uri: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return _artifact_repos.get_or_compute(
        (tracking_uri, root_uri), lambda: get_artifact_repository(root_uri, tracking_uri=tracking_uri)
    )


def _download(artifact_uri: str, dst: str, tracking_uri: str, model: str, version: Any) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.artifact_utils import _get_root_uri_and_artifact_path

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if artifact_uri.startswith(("models:", "runs:")):  # resolved per call by MLflow: not kept
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=dst, tracking_uri=tracking_uri
            )
        else:  # what mlflow.artifacts.download_artifacts does, on a kept repository
            Path(dst).mkdir(parents=True, exist_ok=True)
            root_uri, artifact_path = _get_root_uri_and_artifact_path(artifact_uri)
            local = _artifact_repo(root_uri, tracking_uri).download_artifacts(artifact_path, dst_path=dst)
        return Path(local)
    except (MlflowException, OSError) as exc:
        raise cannot_download(model, version, artifact_uri, exc) from exc


def cannot_download(model: str, version: Any, artifact_uri: str, exc: Exception) -> ModelError:
    """The error for an artifact of a version that could not be fetched (named by its last path part)."""
    return ModelError(
        f"model {model!r} version {version}: cannot download {artifact_uri.rsplit('/', 1)[-1]}: {exc}"
    )
