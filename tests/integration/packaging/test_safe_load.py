"""The loader gate's decisions on MLmodel files, one shape at a time (no registry needed: the registry paths
are in tests/reliability/test_registry_attack.py and test_legacy_model.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from loopline.errors import ModelError
from loopline.packaging.safe_load import (
    FORMAT_LEGACY,
    FORMAT_LOADER_MODULE,
    ModelRefused,
    inspect_mlmodel,
    pickle_globals,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "legacy_model" / "model"
LOOPLINE = {"loader_module": "loopline.packaging.pyfunc", "data": "data/bundle", "code": None}
LEGACY_PICKLE = (FIXTURE / "python_model.pkl").read_bytes()


def _plan(flavors: dict, files: dict[str, bytes] | None = None):
    files = files or {}
    return inspect_mlmodel({"flavors": flavors}, "m", 3, lambda rel: files[rel])


def _legacy(**extra) -> dict:
    return {
        "loader_module": "mlflow.pyfunc.model",
        "python_model": "python_model.pkl",
        "artifacts": {"bundle": {"path": "artifacts/bundle", "uri": "/tmp/x/bundle"}},
        **extra,
    }


class Boom:
    # eval, not print: Prefect's log_prints replaces builtins.print while a flow runs (a helper saw a flow of
    # an earlier test in the same process leave it replaced), and the pickle would then name another global
    def __reduce__(self):
        return (eval, ("print('never')",))


def test_loopline_models_and_legacy_loopline_models_are_accepted():
    plan = _plan({"python_function": LOOPLINE})
    assert (plan.format, plan.bundle_path, plan.loader) == (
        FORMAT_LOADER_MODULE,
        "data/bundle",
        "loopline.packaging.pyfunc",
    )
    legacy = _plan({"python_function": _legacy(code="code")}, {"python_model.pkl": LEGACY_PICKLE})
    assert (legacy.format, legacy.bundle_path) == (
        FORMAT_LEGACY,
        "artifacts/bundle",
    )  # its code/ is never used


@pytest.mark.parametrize(
    ("flavors", "files", "why"),
    [
        ({}, {}, "no python_function flavour"),
        ({"python_function": {**LOOPLINE, "code": "code"}}, {}, "carries code"),
        ({"python_function": LOOPLINE, "sklearn": {"pickled_model": "m.pkl"}}, {}, "sklearn flavour"),
        ({"python_function": {**LOOPLINE, "python_model": "p.pkl"}}, {}, "python_model pickle beside"),
        ({"python_function": {**LOOPLINE, "predict_fn": "__init__"}}, {}, "predict_fn"),
        ({"python_function": {**LOOPLINE, "data": "../../etc"}}, {}, "outside the model directory"),
        ({"python_function": {**LOOPLINE, "data": "/etc"}}, {}, "outside the model directory"),
        (
            {"python_function": {"loader_module": "mlflow.sklearn", "model_path": "m.pkl"}},
            {},
            "'mlflow.sklearn'",
        ),
        ({"python_function": {"loader_module": "os", "data": "x"}}, {}, "loader module 'os'"),
        (
            {"python_function": {"loader_module": "mlflow.pyfunc.model", "model_code_path": "model.py"}},
            {},
            "models-from-code",
        ),
        ({"python_function": _legacy()}, {"python_model.pkl": pickle.dumps(Boom())}, "builtins.eval"),
        ({"python_function": _legacy()}, {"python_model.pkl": b"not a pickle"}, "?.?"),
        (
            {"python_function": _legacy(artifacts={})},
            {"python_model.pkl": LEGACY_PICKLE},
            "no bundle artifact",
        ),
        (
            {"python_function": _legacy(python_model="../python_model.pkl")},
            {"python_model.pkl": LEGACY_PICKLE},
            "outside the model directory",
        ),
    ],
)
def test_what_loopline_cannot_load_safely_is_refused_with_the_reason(flavors, files, why):
    with pytest.raises(ModelRefused) as refused:
        _plan(flavors, files)
    assert isinstance(refused.value, ModelError)
    assert str(refused.value).startswith("model 'm' version 3 is refused: ") and why in str(refused.value)


def test_the_pickle_scan_reads_opcodes_and_runs_nothing(capsys):
    assert pickle_globals(LEGACY_PICKLE) == {
        ("loopline.pyfunc", "LooplineModel"),
        ("mlflow.models.signature", "_TypeHints"),
    }
    assert pickle_globals(pickle.dumps(Boom(), protocol=3)) == {("builtins", "eval")}
    assert capsys.readouterr().out == ""
