"""Hostile models in the registry: whoever can write to MLflow must not be able to run code on the machines
that evaluate, promote or serve its models.

Four real attacks, each registered in a real MLflow the way anyone with write access can: a cloudpickled
`python_model` whose `__reduce__` writes a marker file, a `loader_module` shipped in the model's own
`code/` directory that writes it on import, an sklearn flavour whose pickle writes it, and a models-from-code
file that writes it when executed. For each, the control first loads the model with MLflow's own
`mlflow.pyfunc.load_model` (what loopline used before the loader gate) and sees the marker appear; then every
loopline path that loads candidates (promotion, evaluation, infra validation, the model server's source,
and a promotion over a hostile champion) must refuse it with a clear ModelError naming the model and version,
and the marker must never appear. A freshly trained loopline model still promotes, serves and loads with
`mlflow.pyfunc.load_model`, and its artifact holds no pickle and no code.
"""

from __future__ import annotations

import pickle
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.reliability.registry_support import (
    DATASET,
    clone,
    promote,
    register_directory,
    trained_registry,
    training_tags,
)

pytestmark = pytest.mark.integration
ATTACKS = ("cloudpickled python_model", "code/ loader module", "sklearn pickle", "models-from-code")
PYFUNC_ENV = {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}


class Trap:
    """Unpickling it opens (creates) the marker file: any code would run the same way."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def build_attack(kind: str, folder: Path, marker: Path) -> Path:
    """A model directory whose loading by MLflow creates `marker`."""
    folder.mkdir(parents=True)
    run_marker = f"open({str(marker)!r}, 'w').write('pwned')\n"
    if kind == "cloudpickled python_model":
        (folder / "python_model.pkl").write_bytes(pickle.dumps(Trap(marker)))
        conf = {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
        conf["cloudpickle_version"] = "3.1.3"
        flavors = {"python_function": conf}
    elif kind == "code/ loader module":
        module = f"trap_{uuid.uuid4().hex}"
        (folder / "code").mkdir()
        (folder / "code" / f"{module}.py").write_text(
            run_marker + "def _load_pyfunc(path):\n    return None\n"
        )
        flavors = {"python_function": {"loader_module": module, "code": "code"}}
    elif kind == "sklearn pickle":
        (folder / "model.pkl").write_bytes(pickle.dumps(Trap(marker)))
        flavors = {
            "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"},
            "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"},
        }
    else:
        (folder / "model.py").write_text(run_marker)
        flavors = {"python_function": {"loader_module": "mlflow.pyfunc.model", "model_code_path": "model.py"}}
    for conf in flavors.values():
        conf.setdefault("env", PYFUNC_ENV)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": flavors, "mlflow_version": "3.17.2"}))
    (folder / "conda.yaml").write_text("dependencies: [python=3.11]\n")
    (folder / "python_env.yaml").write_text("python: 3.11\nbuild_dependencies: []\ndependencies: []\n")
    return folder


def load_with_mlflow(model_dir: Path) -> None:
    """The control: MLflow's own loader on the same directory (the attack must be live)."""
    import mlflow.pyfunc

    saved = list(sys.path)
    try:
        mlflow.pyfunc.load_model(str(model_dir))
    except Exception:  # the trap ran already, or the model is broken after it: either way, not our concern
        pass
    finally:
        sys.path[:] = saved


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    return trained_registry(tmp_path_factory)


def _attempts(reg, name: str, bad: int, tmp_path: Path):
    """(path, call) for every loopline path that loads a candidate; a call returns the outcome or raises."""
    from loopline.release.infra_validation import sample_rows, validate_infra
    from loopline.release.scoring import evaluate_versions
    from loopline.release.testset import read_test_set
    from loopline.serving.registry_source import RegistrySource

    test = read_test_set(reg["lake"], DATASET, 0)
    yield "promotion", lambda: promote(reg, name, bad)
    yield (
        "evaluation",
        lambda: evaluate_versions(
            reg["cfg"], name, bad, lake=reg["lake"], tracking_uri=reg["tracking"], champion_version=None
        ),
    )
    yield (
        "infra validation",
        lambda: validate_infra(
            f"models:/{name}/{bad}",
            sample_rows(test.contract, test.frame, 10),
            test.contract,
            tracking_uri=reg["tracking"],
        ),
    )
    yield "serving", lambda: RegistrySource(reg["tracking"], tmp_path / "serving").download(name, str(bad))


def _refused(outcome, name: str, bad: int) -> bool:
    """A clear refusal naming the model and version: an exception, or a result that says so."""
    from loopline.errors import ModelError

    says = f"model {name!r} version {bad} is refused"
    if isinstance(outcome, BaseException):
        return isinstance(outcome, ModelError) and says in str(outcome)
    if "promoted" in outcome:  # a promotion: not promoted, refused before anything was loaded
        return (
            outcome["promoted"] is False
            and outcome["reason"].startswith("refused by the loader gate")
            and (says in outcome["reason"])
        )
    return outcome["ok"] is False and outcome.get("refused") is True and says in outcome["reason"]


def test_hostile_models_are_refused_everywhere_and_never_run(reg, tmp_path, reliability_report):
    from loopline.release.champion import read_history

    tries, executed, failures = 0, 0, []
    for kind in ATTACKS:
        marker = tmp_path / f"{kind.replace('/', '_').replace(' ', '_')}.marker"
        model_dir = build_attack(kind, tmp_path / "models" / marker.stem, marker)
        load_with_mlflow(model_dir)
        assert marker.exists(), f"the control: MLflow's loader did not run the {kind} trap"
        marker.unlink()

        name = clone(reg)
        assert promote(reg, name, 1, infra_validate=False)["promoted"]
        bad = register_directory(reg, name, model_dir, training_tags(reg))
        for path, call in _attempts(reg, name, bad, tmp_path / marker.stem):
            tries += 1
            try:
                outcome = call()
            except Exception as exc:  # noqa: BLE001 - the outcome is judged below
                outcome = exc
            if marker.exists():
                executed += 1
                failures.append(f"{kind} via {path}: the attacker's code ran")
                marker.unlink()
            elif not _refused(outcome, name, bad):
                failures.append(f"{kind} via {path}: not refused clearly: {outcome!r}"[:600])
        champion = int(reg["client"].get_model_version_by_alias(name, "champion").version)
        assert champion == 1 and [e["champion"] for e in read_history(reg["client"], name)] == [1]

        # a hostile version made champion by hand: a good candidate is judged alone and replaces it
        tries += 1
        reg["client"].set_registered_model_alias(name, "champion", str(bad))
        other = int(reg["client"].create_model_version(name, **_source_of_base(reg)).version)
        try:
            result = promote(reg, name, other, infra_validate=False)
        except Exception as exc:  # noqa: BLE001 - judged below
            result = {"promoted": False, "reason": repr(exc), "champion_error": None}
        if marker.exists():
            executed += 1
            failures.append(f"{kind} as champion: the attacker's code ran")
        elif not (result["promoted"] and "is refused" in (result["champion_error"] or "")):
            failures.append(f"{kind} as champion: {result['reason']} / {result['champion_error']}"[:600])

    reliability_report.add(
        "hostile pickle in the registry",
        tries=tries,
        code_executed=executed,
        note=f"code executed: {executed} ({len(ATTACKS)} attacks x 5 loading paths; MLflow's loader ran all 4)",
    )
    assert not failures, "\n".join(failures)
    assert executed == 0


def _source_of_base(reg) -> dict:
    mv = reg["client"].get_model_version("base", "1")
    return {"source": mv.source, "run_id": mv.run_id}


def test_a_freshly_trained_model_promotes_serves_and_loads_with_mlflow(reg, tmp_path):
    import mlflow.artifacts
    import mlflow.pyfunc

    from loopline.release.testset import read_test_set
    from loopline.serving.model import load_bundle_model
    from loopline.serving.registry_source import RegistrySource

    name = clone(reg)
    # (infra validation of the same format in a fresh process: tests/integration/release/test_promotion.py)
    result = promote(reg, name, 1, infra_validate=False)
    assert result["promoted"], result["reason"]
    assert result["data"]["candidate_loader"] == "loopline.packaging.pyfunc"

    rows = read_test_set(reg["lake"], DATASET, 0).frame.head(25)
    bundle = RegistrySource(reg["tracking"], tmp_path / "serving").download(name, "1")
    served = load_bundle_model(bundle, name=name, version="1", alias="champion", device="cpu").predictor
    root = reg["client"].get_model_version_download_uri(name, "1")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=root, dst_path=str(tmp_path / "model")))
    pyfunc = mlflow.pyfunc.load_model(str(local))
    np.testing.assert_allclose(np.asarray(pyfunc.predict(rows)), served.predict(rows), rtol=1e-6)

    # the artifact: the bundle (weights + JSON + YAML) and MLflow's metadata; no pickle, no code
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert {"MLmodel", "data/bundle/model.pt", "data/bundle/bundle.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".py", ".pickle")) or f.startswith("code/")], files
    conf = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
    assert (
        list(conf) == ["python_function"]
        and conf["python_function"]["loader_module"] == "loopline.packaging.pyfunc"
    )
