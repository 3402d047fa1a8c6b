"""Lesson 04 without Docker: validation, the 503 when Docker is unreachable, the offline model's
tool call, and the OpenAPI schema. The hostile suite (test_hostile.py) runs real containers."""

import json

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from chat_model import OfflineToolCallingModel
from tests.support.errors import assert_error
from tests.support.sandbox_api import RESULT_FIELDS

NO_DOCKER = "unix:///nonexistent/docker.sock"
URL = "http://localhost:8000"  # a Host the API answers (ALLOWED_HOSTS)


@pytest.fixture
def client(lesson):
    module = lesson(DOCKER_HOST=NO_DOCKER, MAX_CODE_CHARS="100")
    with TestClient(module.app, base_url=URL, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"code": ""},
        {"code": " \n\t "},
        {"code": "x" * 101},
        {"code": "print(1)", "timeout_seconds": 0},
        {"code": "print(1)", "timeout_seconds": 31},
        {"code": 42},
    ],
    ids=["missing", "empty", "blank", "oversized", "zero-timeout", "timeout-too-long", "not-text"],
)
def test_bad_code_requests_are_422_before_any_container(client, body):
    error = assert_error(client.post("/v1/tools/python", json=body), 422, "validation_error")
    assert error["details"] and error["details"][0]["loc"][0] == "body"


def test_no_docker_is_a_503_that_says_so(client):
    response = client.post(
        "/v1/tools/python", json={"code": "print(1)"}, headers={"X-Request-ID": "no-docker-1"}
    )
    error = assert_error(response, 503, "sandbox_unavailable")
    assert error["request_id"] == "no-docker-1"
    assert "Docker is not reachable" in error["message"]


def test_the_agent_answers_503_when_its_tool_needs_docker(client):
    response = client.post("/v1/agent", json={"query": "What is 2**100?"})
    assert_error(response, 503, "sandbox_unavailable")


def test_the_agent_needs_no_sandbox_for_a_question_without_computation(client):
    response = client.post("/v1/agent", json={"query": "What is a container?"})
    assert response.status_code == 200
    assert response.json()["tool_calls"] == []
    assert "What is a container?" in response.json()["answer"]


def test_the_openapi_schema_describes_the_result_and_the_errors(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/tools/python"]["post"]
    assert {"422", "503"} <= set(operation["responses"])
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    result = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(result["properties"]) == RESULT_FIELDS


# --- The offline model: it decides, deterministically, when to call the tool ---


@pytest.mark.parametrize(
    "question, expression",
    [
        ("What is 2**100?", "2**100"),
        ("Compute (17 + 4) * 3, please", "(17 + 4) * 3"),
        ("How much is 7 % 3 plus 10/4?", "7 % 3"),
        ("What is a container?", None),
        ("What happened in 2024?", None),
    ],
)
def test_the_offline_model_finds_arithmetic_to_compute(question, expression):
    assert OfflineToolCallingModel.expression(question) == expression


@tool
def run_python(code: str) -> str:
    """Run Python."""
    return ""


def test_the_offline_model_calls_the_tool_then_answers_from_its_result():
    model = OfflineToolCallingModel(token_delay_ms=0).bind_tools([run_python])
    question = HumanMessage("What is 2**100?")
    first = model.invoke([question])
    assert first.tool_calls == [
        {"name": "run_python", "args": {"code": "print(2**100)"}, "id": first.tool_calls[0]["id"]}
        | {"type": "tool_call"}
    ]
    result = {"stdout": "1267650600228229401496703205376\n", "stderr": "", "exit_code": 0}
    reply = ToolMessage(json.dumps(result), tool_call_id=first.tool_calls[0]["id"])
    second = model.invoke([question, AIMessage("", tool_calls=first.tool_calls), reply])
    assert not second.tool_calls
    assert "2**100 = 1267650600228229401496703205376" in second.text


def test_the_offline_model_reports_a_failed_run():
    model = OfflineToolCallingModel(token_delay_ms=0).bind_tools([run_python])
    question = HumanMessage("What is 1/0?")
    first = model.invoke([question])
    failed = {"stdout": "", "stderr": "ZeroDivisionError: division by zero\n", "exit_code": 1}
    reply = ToolMessage(json.dumps(failed), tool_call_id=first.tool_calls[0]["id"])
    second = model.invoke([question, AIMessage("", tool_calls=first.tool_calls), reply])
    assert "failed" in second.text and "ZeroDivisionError" in second.text


def test_without_a_bound_tool_it_is_the_plain_offline_model():
    answer = OfflineToolCallingModel(token_delay_ms=0).invoke("What is 2**100?")
    assert not answer.tool_calls and "You asked: What is 2**100?" in answer.text


# --- Hostile input to the API itself (before any container) ---


@pytest.mark.parametrize(
    "timeout", ["5", "1_0", True], ids=["string", "underscored-string", "boolean"]
)
def test_timeout_must_be_a_json_number(client, timeout):
    body = {"code": "print(1)", "timeout_seconds": timeout}
    error = assert_error(client.post("/v1/tools/python", json=body), 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "timeout_seconds"]


def test_code_with_a_nul_byte_is_refused_not_cut(client):
    # Python stops reading a source at NUL: whatever follows would silently never run.
    body = {"code": "print(1)\x00print(2)"}
    error = assert_error(client.post("/v1/tools/python", json=body), 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "code"]


@pytest.mark.parametrize(
    "raw",
    [b'{"code": "print(\xff)"}', b'{"code": "x", "pad": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["invalid-utf8", "deeply-nested"],
)
def test_undecodable_bodies_answer_in_the_error_shape(lesson, raw):
    module = lesson(DOCKER_HOST=NO_DOCKER, MAX_BODY_BYTES="1000000")
    with TestClient(module.app, base_url=URL, raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/tools/python", content=raw, headers={"content-type": "application/json"}
        )
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code, response.json()["error"]["type"])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(lesson, chunked):
    module = lesson(DOCKER_HOST=NO_DOCKER, MAX_BODY_BYTES="1000")
    body = json.dumps({"code": "print(1)", "pad": "x" * 5000}).encode()
    content = iter([body[i : i + 512] for i in range(0, len(body), 512)]) if chunked else body
    with TestClient(module.app, base_url=URL, raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/tools/python", content=content, headers={"content-type": "application/json"}
        )
    assert_error(response, 413, "payload_too_large")


def test_the_openapi_schema_declares_every_error_it_sends(client):
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/tools/python"]["post"]["responses"]
    assert {"400", "413", "422", "503"} <= set(responses)
