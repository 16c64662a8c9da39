"""`loopline up --compose` on a host without a Docker engine (this one, and CI's): one paragraph naming what is
missing and the process-based alternative, exit 2, no traceback. The compose platform itself waits for a host
with an engine (tests/infra checks the compose file against the compose-spec schema)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.cli_support import run_cli

pytestmark = pytest.mark.integration


def _engine_answers() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0


def test_up_compose_without_an_engine_says_so(tmp_path):
    if _engine_answers():
        pytest.skip("a Docker engine answers here: `make up-compose` is the check on such a host")
    for args in (["up", "--compose"], ["down", "--compose"]):
        done = run_cli(*args, home=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Docker" in done.stderr and "loopline up" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout
