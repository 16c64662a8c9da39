"""flows/stack/launch.py `deploy_caches`, used only by `loopline up`'s deploy process: a project entrypoint
file resolves to its imported package module (Prefect executed the file again per deployment), a
deployment's parameter schema is its flow's own (a copy), and anything else loads as Prefect loads it. In a
fresh process, since it changes Prefect's module globals there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import sys
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema as built_fresh
from flows.stack.launch import deploy_caches
import prefect.cli.deploy._core as core

assert deploy_caches() is True and deploy_caches() is True  # idempotent
import flows.promotion
flow = load_flow_from_entrypoint("flows/promotion.py:promotion_flow")
assert flow is flows.promotion.promotion_flow, "the project file is its package module"

schema = core.parameter_schema(flow)
assert schema == built_fresh(flow) and schema is not flow.parameters
schema.properties["model"]["readOnly"] = True  # what a deployment does to its own copy
assert "readOnly" not in flow.parameters.properties["model"]

outside = load_flow_from_entrypoint(sys.argv[1] + ":elsewhere")  # outside the project: Prefect's own load
assert outside.name == "elsewhere" and type(outside).__module__ == "prefect.flows"
print("ok")
"""


def test_project_entrypoints_load_once_and_deployments_take_the_flows_schema(tmp_path):
    script = tmp_path / "other.py"
    script.write_text(
        "from prefect import flow\n\n@flow(name='elsewhere')\ndef elsewhere(n: int = 1):\n    return n\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", CHECK, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr
