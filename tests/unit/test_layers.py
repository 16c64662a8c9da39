"""The layer rules (README.md "Layers and the map", loopline/__init__.py): flows -> tasks -> loopline; the core never imports
prefect; within the core a stage imports only the stages before it; the CLI starts without the heavy
libraries; models registered under the pre-regroup module paths still resolve."""

import ast
import subprocess
import sys
from pathlib import Path

import loopline

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "loopline"
# The import order of the stages, decided by the real imports: training stores the drift reference
# profile (monitoring) and registers through packaging; monitoring reads serving's prediction log;
# release evaluates, promotes and deploys to serving.
STAGES = ("storage", "data", "features", "packaging", "serving", "monitoring", "train", "release")
BASE = ("cache", "config", "errors", "faults", "_exports", "_legacy")  # below every stage


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth (lazy imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from loopline import storage` names a stage too
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "loopline" else None


def test_every_core_module_belongs_to_a_stage_or_the_base():
    strays = [
        str(p.relative_to(REPO)) for p in CORE.glob("*.py") if p.stem not in BASE and p.stem != "__init__"
    ]
    packages = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").exists())
    assert strays == [] and packages == sorted(STAGES)


def test_the_package_docstring_lists_the_stages_in_import_order():
    listed = [line.split()[0] for line in loopline.__doc__.splitlines() if line.startswith("    ")]
    assert tuple(listed) == STAGES


def test_a_stage_imports_only_the_stages_before_it():
    offenders = []
    for path in CORE.rglob("*.py"):
        own = path.relative_to(CORE).parts[0]
        if own not in STAGES:
            continue
        for line, module in _imports(path):
            other = _stage_of(module)
            if other in STAGES and STAGES.index(other) > STAGES.index(own):
                offenders.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {module} ({other})")
    assert offenders == []


def test_the_core_imports_no_layer_above_it_and_tasks_import_no_flows():
    offenders = []
    for layer, forbidden in (("loopline", ("prefect", "tasks", "flows", "blocks")), ("tasks", ("flows",))):
        for path in (REPO / layer).rglob("*.py"):
            for line, module in _imports(path):
                if module.split(".")[0] in forbidden:
                    offenders.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert offenders == []


def test_importing_the_core_loads_no_prefect():
    code = (
        "import sys, pkgutil, importlib, loopline\n"
        "for m in pkgutil.walk_packages(loopline.__path__, 'loopline.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cli_help_is_light():
    code = "import sys; from flows import cli; print(sorted(m for m in ('prefect','mlflow','torch','great_expectations') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_old_module_paths_are_the_new_modules():
    """Registered models name `loopline.pyfunc.LooplineModel` (the pickle) and `loopline.models:mlp`
    (bundle.json): the old names import the very same module objects."""
    code = (
        "import importlib, loopline._legacy as L\n"
        "bad = [o for o, n in L.OLD_TO_NEW.items() if importlib.import_module(o) is not importlib.import_module(n)]\n"
        "from loopline.packaging.factory import resolve_factory\n"
        "from loopline.train.models import mlp\n"
        "print(bad, resolve_factory('loopline.models:mlp') is mlp)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[] True"
