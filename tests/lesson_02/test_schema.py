"""The OpenAPI schema describes what the service really sends: schemathesis checks it.

A real `python main.py` on loopback serves its own /openapi.json; schemathesis generates requests
for every operation from it, valid ones and invalid ones, and runs every check it has against each
answer: no 5xx, status codes, content types, headers and bodies that match the schema, valid data
accepted and invalid data rejected. A route that drifts from its schema fails here.
"""

import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from support.lessons import AGENT_DIR
from support.ports import free_port
from support.server import ServerProcess, offline_environment

KEY = "schema-test-key-0123456789"
load_all_checks()
ALL_CHECKS = CHECKS.get_all()


@pytest.fixture(scope="module")
def agent_schema():
    # With a key, as in production: schemathesis sends it, and its ignored_auth check also sends
    # each operation without a key and with a wrong one, which must answer 401. No rate limit:
    # hundreds of valid requests in a minute must not turn into 429s.
    port = free_port()
    env = offline_environment(
        HOST="127.0.0.1",
        PORT=port,
        OFFLINE_TOKEN_DELAY_MS=0,
        SHUTDOWN_DRAIN_SECONDS=0,
        API_KEYS=f"schema:{KEY}",
        RATE_LIMIT="off",
    )
    script = [sys.executable, "main.py"]
    with ServerProcess(script, cwd=AGENT_DIR, env=env, port=port, ready_path="/ready") as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        # An invalid body can also be a large one (2,000 escaped astral characters are over
        # MAX_BODY_BYTES): 413 rejects it as surely as 422 does.
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
        yield schema


def operations(schema) -> list:
    found = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in found}
    assert {
        "GET /health",
        "GET /ready",
        "GET /metrics",
        "POST /v1/research",
        "POST /v1/research/stream",
    } <= labels, labels
    return found


# schemathesis' own pytest loader (`from_fixture`) does not work with pytest 9 yet, so each
# operation's hypothesis strategy is driven here: the same cases and the same checks.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_matches_the_schema(agent_schema, mode):
    for operation in operations(agent_schema):
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to get wrong in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=40,  # per operation and mode: every error path, fast enough for CI
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(
                checks=ALL_CHECKS, timeout=30, headers={"Authorization": f"Bearer {KEY}"}
            )

        check()


def test_all_checks_are_run():
    names = {check.__name__ for check in ALL_CHECKS}
    assert {
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "positive_data_acceptance",
        "negative_data_rejection",
        "ignored_auth",
    } <= names, names
