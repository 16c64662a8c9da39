"""No module of flows/, tasks/ or blocks/ shadows a standard-library module. Deployment entrypoints run with
their folder on sys.path, so a `flows/profile.py` became `profile` for every import in the worker's flow run:
torch's `import cProfile` then failed ("module 'profile' has no attribute 'run'") and training through the gpu
pool died, while the same code in-process worked."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_top_level_module_shadows_the_standard_library():
    clashes = [
        str(path.relative_to(REPO))
        for folder in ("flows", "tasks", "blocks")
        for path in (REPO / folder).iterdir()
        if (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))
        and path.stem in sys.stdlib_module_names
    ]
    assert clashes == []
