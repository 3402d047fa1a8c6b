"""The production version (code/lesson01/production_api.py): what it adds to step 5. Settings,
strict input, a body limit, a cache, CORS and an OpenAPI document that declares every error; what it
shares with the steps is tested with them (test_request_ids.py, test_metrics.py, test_errors.py,
test_graceful_shutdown.py) and test_steps.py checks that it answers as step 5 does."""

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from cachetools import TTLCache
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from tests.support.errors import assert_error
from tests.support.metrics import metric

PRODUCTION_STEPS = ["lesson01/production_api.py"]


@pytest.fixture(params=PRODUCTION_STEPS)
def load_production(load_script, request):
    def load(**env: str):
        return load_script(request.param, **env)

    return load


@pytest.fixture
def prod(load_production):
    return load_production()


@pytest.fixture
def client(prod):
    with TestClient(prod.app) as client:
        yield client


def test_invoke_answers_offline_with_a_request_id(client):
    response = client.post("/v1/invoke", json={"query": "What is a container?"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "offline-model"
    assert "What is a container?" in body["response"]
    assert body["tokens_used"] > 0 and body["cached"] is False
    assert body["request_id"] == response.headers["x-request-id"]
    assert uuid.UUID(body["request_id"])
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]


def test_metrics_count_requests_by_route_template_and_tokens(client):
    before = metric(client, "agent_tokens_total", model="offline-model")
    tokens = client.post("/v1/invoke", json={"query": "count me"}).json()["tokens_used"]
    assert (
        metric(client, "http_requests_total", method="POST", route="/v1/invoke", status="200") == 1
    )
    assert metric(client, "agent_tokens_total", model="offline-model") == before + tokens
    assert (
        metric(client, "http_request_duration_seconds_count", method="POST", route="/v1/invoke")
        == 1
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"query": ""},
        {"query": "x" * 4001},
        {"query": "q", "temperature": 3},
        {"query": "q", "max_tokens": 0},
        {"query": "q", "max_tokens": 5000},
        {"nothing": 1},
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, payload):
    error = assert_error(client.post("/v1/invoke", json=payload), 422, "validation_error")
    # The course's one shape for validation problems: pydantic's own {loc, msg, type}.
    assert error["details"]
    for detail in error["details"]:
        assert set(detail) == {"loc", "msg", "type"}, detail
        assert detail["loc"][0] == "body" and detail["loc"][1:], detail
        assert detail["msg"] and detail["type"], detail


def test_a_422_lists_every_problem_where_it_is(client):
    response = client.post("/v1/invoke", json={"query": "", "temperature": False})
    details = assert_error(response, 422, "validation_error")["details"]
    assert [(d["loc"], d["type"]) for d in details] == [
        (["body", "query"], "string_too_short"),
        (["body", "temperature"], "float_type"),
    ]


def test_query_length_limit_comes_from_settings(load_production):
    with TestClient(load_production(MAX_QUERY_CHARS="10").app) as client:
        assert client.post("/v1/invoke", json={"query": "x" * 10}).status_code == 200
        assert client.post("/v1/invoke", json={"query": "x" * 11}).status_code == 422


def test_cache_hits_only_when_every_input_matches(client):
    ask = {"query": "cache me", "temperature": 0.2, "max_tokens": 50}
    assert client.post("/v1/invoke", json=ask).json()["cached"] is False
    assert client.post("/v1/invoke", json=ask).json()["cached"] is True
    for change in (
        {"temperature": 0.9},
        {"max_tokens": 10},
        {"query": "other"},
        {"context": {"a": 1}},
    ):
        assert client.post("/v1/invoke", json={**ask, **change}).json()["cached"] is False
    assert metric(client, "agent_cache_requests_total", result="hit") == 1
    assert metric(client, "agent_cache_requests_total", result="miss") == 5


def test_cache_is_bounded_in_size_and_time(client):
    now = [0.0]
    client.app.state.agent.cache = TTLCache(maxsize=2, ttl=60, timer=lambda: now[0])
    for query in ("a", "b", "c"):
        client.post("/v1/invoke", json={"query": query})
    assert (
        client.post("/v1/invoke", json={"query": "a"}).json()["cached"] is False
    )  # evicted by size
    assert client.post("/v1/invoke", json={"query": "c"}).json()["cached"] is True
    now[0] = 61.0
    assert client.post("/v1/invoke", json={"query": "c"}).json()["cached"] is False  # expired


def test_cache_can_be_turned_off(load_production):
    with TestClient(load_production(CACHE_MAX_ENTRIES="0").app) as client:
        for _ in range(2):
            assert client.post("/v1/invoke", json={"query": "same"}).json()["cached"] is False


def test_max_tokens_from_the_request_reaches_the_model(client):
    body = client.post("/v1/invoke", json={"query": "long question here", "max_tokens": 3}).json()
    assert body["response"] == "[offline model] You"


def test_stream_sends_tokens_then_done_and_counts_tokens(client):
    before = metric(client, "agent_tokens_total", model="offline-model")
    with connect_sse(client, "POST", "/v1/stream", json={"query": "stream"}) as source:
        assert source.response.headers["x-request-id"]
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]" and len(data) > 5
    assert metric(client, "agent_tokens_total", model="offline-model") > before


def test_cors_allows_configured_origins_with_credentials(load_production):
    app = load_production(CORS_ORIGINS='["https://app.example.com"]').app
    with TestClient(app) as client:
        preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
        response = client.options("/v1/invoke", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert response.headers["access-control-allow-credentials"] == "true"
        other = client.options(
            "/v1/invoke", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_cors_wildcard_never_comes_with_credentials(load_production):
    app = load_production(CORS_ORIGINS='["*"]').app
    with TestClient(app) as client:
        response = client.get("/health", headers={"Origin": "https://anywhere.example"})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


def test_no_cors_headers_without_configured_origins(client):
    response = client.get("/health", headers={"Origin": "https://anywhere.example"})
    assert "access-control-allow-origin" not in response.headers


# --- Strict input: types as sent, lengths as sent ---


@pytest.mark.parametrize(
    "payload",
    [
        {"query": "q", "temperature": False},
        {"query": "q", "temperature": "0.5"},
        {"query": "q", "max_tokens": "5"},
        {"query": "q", "max_tokens": 5.5},
        {"query": "q", "max_tokens": True},
        {"query": 42},
    ],
)
def test_values_of_the_wrong_type_are_refused_not_converted(client, payload):
    assert_error(client.post("/v1/invoke", json=payload), 422, "validation_error")


def test_an_integer_is_a_valid_temperature(client):
    assert client.post("/v1/invoke", json={"query": "q", "temperature": 1}).status_code == 200


def test_the_length_limit_counts_what_the_client_sent(client):
    padded = "  " + "x" * 3998 + "  "  # 4002 characters, 3998 without the spaces
    assert_error(client.post("/v1/invoke", json={"query": padded}), 422, "validation_error")
    assert client.post("/v1/invoke", json={"query": padded[:4000]}).status_code == 200


# --- The body size limit: 413 before the body is read ---

MAX_BODY_BYTES = 65_536
CHUNK = 16_384
FIFTY_MB = 50 * 1024 * 1024


def call_with_a_large_body(app, headers: list[tuple[bytes, bytes]]) -> tuple[int, list[dict]]:
    """Run one raw ASGI request whose body is 50 MB; return how many body bytes the app pulled."""
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        pulled += CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": pulled < FIFTY_MB}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/invoke",
        "raw_path": b"/v1/invoke",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    return pulled, sent


@pytest.mark.parametrize(
    "length_header, most_read",
    [
        ([(b"content-length", str(FIFTY_MB).encode())], 0),  # refused on the declared length
        ([(b"transfer-encoding", b"chunked")], MAX_BODY_BYTES + CHUNK),  # refused while counting
    ],
    ids=["content-length", "chunked"],
)
def test_a_large_body_is_refused_with_413_before_it_is_read(prod, length_header, most_read):
    pulled, sent = call_with_a_large_body(prod.app, length_header)
    assert pulled <= most_read
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 413
    error = json.loads(body)["error"]
    assert error["type"] == "payload_too_large" and str(MAX_BODY_BYTES) in error["message"]
    assert (b"x-request-id", error["request_id"].encode()) in start["headers"]


def test_the_body_limit_comes_from_settings(load_production):
    with TestClient(load_production(MAX_BODY_BYTES="100").app) as client:
        assert client.post("/v1/invoke", json={"query": "short"}).status_code == 200
        response = client.post("/v1/invoke", json={"query": "x" * 100})
        assert_error(response, 413, "payload_too_large")


def peak_memory_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("reads the server's peak memory from /proc, which only Linux has")
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1])


def post_fifty_megabytes(port: int, chunked: bool) -> bytes:
    """Send a 50 MB body over a raw socket while reading the answer as soon as it comes."""
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {FIFTY_MB}"
        sock.sendall(
            f"POST /v1/invoke HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"{length}\r\n\r\n".encode()
        )

        def read():
            try:
                while b"}}" not in answer and (data := sock.recv(65536)):
                    answer.extend(data)
            except OSError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        piece = b"x" * 65536
        frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        try:
            for _ in range(FIFTY_MB // len(piece)):
                if answer:
                    break  # answered: stop sending (a client that waits for 100-continue would too)
                sock.sendall(frame)
        except OSError:
            pass  # the server may close the connection on a body it will never read
        reader.join(timeout=30)
    return bytes(answer)


def test_a_real_server_does_not_buffer_50_mb_bodies(start_server):
    server = start_server(PRODUCTION_STEPS[0], OFFLINE_TOKEN_DELAY_MS="0")
    before = peak_memory_kib(server.process.pid)
    for chunked in (False, True):
        answer = post_fifty_megabytes(server.port, chunked)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"type":"payload_too_large"' in answer
    grown_mib = (peak_memory_kib(server.process.pid) - before) / 1024
    # Buffered, one such body took the peak from about 100 to 250 MiB.
    assert grown_mib < 16, f"the server's peak memory grew by {grown_mib:.0f} MiB"


# --- The OpenAPI document says what is sent ---


def test_openapi_declares_the_error_shape_instead_of_fastapis(client):
    schema = client.get("/openapi.json").json()
    invoke = schema["paths"]["/v1/invoke"]["post"]["responses"]
    assert {"400", "413", "422", "500", "502", "503", "504"} <= set(invoke)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                        }
                    }, f"{method} {path} {status}"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    issue = schema["components"]["schemas"]["ValidationIssue"]
    assert set(issue["properties"]) == set(issue["required"]) == {"loc", "msg", "type"}


def test_openapi_declares_the_real_media_types(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert list(paths["/v1/stream"]["post"]["responses"]["200"]["content"]) == ["text/event-stream"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("script", PRODUCTION_STEPS)
def test_deeply_nested_context_is_a_422_not_a_500(start_server, script):
    # A context nested about a thousand deep parsed, then made json.dumps (the cache key) recurse
    # past Python's limit: a 500. A real server, because pytest's own stack changes the depth.
    server = start_server(script, OFFLINE_TOKEN_DELAY_MS="0")
    for depth in (40, 966):
        nested = '{"k": ' * depth + '"leaf"' + "}" * depth  # as text: json.dumps would recurse
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/v1/invoke",
            data=('{"query": "deep", "context": ' + nested + "}").encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        assert answer.value.code == 422, depth
        error = json.loads(answer.value.read())["error"]
        assert error["type"] == "validation_error"
        assert "nested more than 32" in json.dumps(error["details"])


def test_context_nested_within_the_bound_is_accepted(client):
    response = client.post(
        "/v1/invoke", json={"query": "shallow", "context": {"a": {"b": {"c": [1, 2, {"d": 3}]}}}}
    )
    assert response.status_code == 200
