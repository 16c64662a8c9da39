"""No module of flows/, tasks/, blocks/ or bench/ shadows a standard-library module. Deployment entrypoints run with
their folder on sys.path, so a `flows/profile.py` became `profile` for every import in the worker's flow run:
torch's `import cProfile` then failed ("module 'profile' has no attribute 'run'") and training through the gpu
pool died, while the same code in-process worked. bench/ runs its side scripts by path (bench/ first on sys.path):
a `bench/platform.py` made `import orjson` segfault in them."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_top_level_module_shadows_the_standard_library():
    clashes = [
        str(path.relative_to(REPO))
        for folder in ("flows", "tasks", "blocks", "bench")
        for path in (REPO / folder).iterdir()
        if (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))
        and path.stem in sys.stdlib_module_names
    ]
    assert clashes == []
