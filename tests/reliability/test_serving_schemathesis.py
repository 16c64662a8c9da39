"""Schemathesis against a real server's own /openapi.json: for every operation it documents, generated
requests (valid ones from the schema, and invalid ones) get no 5xx, every answer matches the schema (a
documented status code, content type, headers such as a 503's Retry-After, and body), and every request
the schema forbids is refused with a 4xx. The number of examples is bounded so the run takes seconds;
`make reliability` runs more."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import rounds
from tests.serving_support import ServerProcess, shared_registry

pytestmark = pytest.mark.integration
TOKEN = "schemathesis-reload-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    registry = shared_registry()
    srv = ServerProcess(
        "demo",
        registry["home"],
        registry["tracking_uri"],
        "--poll-seconds",
        "0",
        env={
            "LOOPLINE_LAKE_URI": str(tmp_path_factory.mktemp("schemathesis-lake")),
            "LOOPLINE_RELOAD_TOKEN": TOKEN,
        },
    )
    srv.wait_ready()
    yield srv
    srv.stop()


def _fuzz(operation, mode, examples: int, base_url: str, checks, seen: dict, failures: list) -> None:
    """`examples` generated requests for one operation in one mode, each validated by `checks`."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.core.failures import FailureGroup

    # generate only: no shrinking, no example database, so the run is bounded and repeatable
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case) -> None:
        response = case.call(base_url=base_url, timeout=10)
        seen["requests"] += 1
        seen["5xx"] += response.status_code >= 500
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:  # keep going: report every failure, not the first
            failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")

    call()


def test_schemathesis_finds_no_5xx_and_every_answer_matches_the_schema(server, reliability_report):
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # not positive_data_acceptance: a dataframe_split row must have one value per column, and `inputs`
    # may be rows or columns; JSON Schema cannot say either, so some schema-valid bodies are rightly 4xx
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,  # a body the schema forbids gets a 4xx
    ]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    seen = {"requests": 0, "5xx": 0}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/invocations", "/ping", "/health", "/version", "/metrics"}
    for operation in operations:
        examples = rounds(60, 500) if operation.path == "/invocations" else rounds(5, 20)
        _fuzz(operation, schemathesis.GenerationMode.POSITIVE, examples, server.url, checks, seen, failures)
        try:
            _fuzz(
                operation, schemathesis.GenerationMode.NEGATIVE, examples, server.url, checks, seen, failures
            )
        except Unsatisfiable:  # nothing in the operation can be made invalid (no body, no parameters)
            pass
    reliability_report.add(
        "schemathesis against /openapi.json",
        tries=seen["requests"],
        unexpected_5xx=seen["5xx"],
        note=f"{len(operations)} operations, positive and negative examples, {len(failures)} failed checks",
    )
    assert seen["5xx"] == 0 and not failures, "\n\n".join(failures[:5])
