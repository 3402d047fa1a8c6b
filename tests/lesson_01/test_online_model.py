"""The real-model path: ChatOpenAI talks to a local server speaking the chat-completions format."""

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from tests.support.openai_stub import ChatCompletionsStub

ANSWER = "Containers package code with its dependencies"
SCRIPTS = [
    "lesson01/step1_api.py",
    "lesson01/step2_request_ids.py",
    "lesson01/step3_metrics.py",
    "lesson01/step4_errors.py",
    "lesson01/step5_shutdown.py",
    "lesson01/production_api.py",
]


def stub_usage(request: dict, answer: str) -> int:
    """What the stub reports as total_tokens: one token per word, prompt plus answer."""
    return sum(len(str(m["content"]).split()) for m in request["messages"]) + len(answer.split())


@pytest.fixture
def stub():
    with ChatCompletionsStub(replies=[{"content": ANSWER}]) as stub:
        yield stub


@pytest.fixture
def online_env(stub):
    return {
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": stub.base_url,
        "MODEL_NAME": "gpt-4o-mini",
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_invoke_uses_the_real_client_and_reports_usage(load_script, online_env, stub, script):
    with TestClient(load_script(script, **online_env).app) as client:
        body = client.post("/v1/invoke", json={"query": "What is a container?"}).json()
    assert body["response"] == ANSWER
    assert body["model"] == "gpt-4o-mini"
    assert body["tokens_used"] == stub_usage(stub.requests[0], ANSWER)
    assert stub.requests[0]["messages"][-1] == {"role": "user", "content": "What is a container?"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_stream_relays_the_providers_tokens(load_script, online_env, stub, script):
    with (
        TestClient(load_script(script, **online_env).app) as client,
        connect_sse(client, "POST", "/v1/stream", json={"query": "stream please"}) as source,
    ):
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    assert data[:-1] == ["Containers", " package", " code", " with", " its", " dependencies"]
    assert stub.requests[0]["stream"] is True
    # Usage is streamed even with a custom base URL.
    assert stub.requests[0]["stream_options"] == {"include_usage": True}


def test_streamed_usage_reaches_the_token_metric(load_script, online_env, stub):
    with TestClient(load_script("lesson01/production_api.py", **online_env).app) as client:
        with connect_sse(client, "POST", "/v1/stream", json={"query": "count"}) as source:
            list(source.iter_sse())
        metrics = client.get("/metrics").text
    usage = stub_usage(stub.requests[0], ANSWER)
    assert f'agent_tokens_total{{model="gpt-4o-mini"}} {usage:.1f}' in metrics


def test_temperature_and_max_tokens_reach_the_provider(load_script, online_env, stub):
    with TestClient(load_script("lesson01/production_api.py", **online_env).app) as client:
        client.post("/v1/invoke", json={"query": "q", "temperature": 0.3, "max_tokens": 42})
        client.post("/v1/invoke", json={"query": "plain"})
    tuned, plain = stub.requests
    assert tuned["temperature"] == 0.3
    assert tuned["max_completion_tokens"] == 42  # langchain-openai's wire name for max_tokens
    assert "temperature" not in plain and "max_completion_tokens" not in plain
