"""The core never imports prefect (DESIGN.md); the CLI starts without the heavy libraries."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_core_modules_do_not_import_prefect():
    offenders = []
    for path in (REPO / "loopline").rglob("*.py"):
        text = path.read_text()
        if "import prefect" in text or "from prefect" in text:
            offenders.append(str(path.relative_to(REPO)))
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
