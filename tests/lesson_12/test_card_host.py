"""Lesson 12's card against hostile Host headers (code/lesson12/a2a_server.py, in process: the card
and the Host check need no database). The card names its interfaces; a client that reads it sends
its tasks, and its token, there.

Before: the Host check read the name before the first ':', so `Host: localhost:99999` passed, and
the card built its URLs from the raw header (`http://localhost:1/a2a/jsonrpc` for `localhost:1`),
served `public, max-age=300`: a shared cache could hand that card to every other client."""

import pytest
from fastapi.testclient import TestClient

from support.lessons import import_lesson
from tests.support.errors import assert_error

CARD = "/.well-known/agent-card.json"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    callers = tmp_path_factory.mktemp("callers") / "callers"
    callers.write_text("planner not-a-real-token\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # never reached
        env.setenv("A2A_CALLERS_FILE", str(callers))
        env.setenv("PORT", "8123")
        env.setenv("ALLOWED_HOSTS", '["127.0.0.1", "localhost", "edge"]')
        env.setenv("PUBLIC_PORTS", '{"edge": 8080}')
        yield import_lesson("lesson12.a2a_server").app


def card_urls(response) -> set[str]:
    return {i["url"] for i in response.json()["supportedInterfaces"]}


@pytest.mark.parametrize(
    "host", ["localhost:99999", "localhost:0", "localhost:", "localhost:1:2", "localhost:1@evil"]
)
def test_a_host_with_a_port_that_is_no_port_is_refused(app, host):
    client = TestClient(app)
    assert_error(client.get(CARD, headers={"Host": host}), 400, "untrusted_host")


@pytest.mark.parametrize("host", ["localhost:1", "localhost", "LOCALHOST:8123", "localhost:65535"])
def test_the_card_names_an_allowed_name_and_the_served_port_never_the_headers(app, host):
    response = TestClient(app).get(CARD, headers={"Host": host})
    assert response.status_code == 200, response.text
    assert card_urls(response) == {
        "http://localhost:8123/a2a/jsonrpc",
        "http://localhost:8123/a2a/rest",
    }


def test_a_name_reached_through_another_port_is_named_with_its_configured_one(app):
    response = TestClient(app).get(CARD, headers={"Host": "edge:9999"})
    assert card_urls(response) == {"http://edge:8080/a2a/jsonrpc", "http://edge:8080/a2a/rest"}


def test_the_card_differs_by_host_so_no_shared_cache_keeps_it(app):
    response = TestClient(app).get(CARD, headers={"Host": "127.0.0.1:8123"})
    assert "private" in response.headers["cache-control"]
    assert "public" not in response.headers["cache-control"]
    assert "host" in response.headers["vary"].lower()


def test_the_card_says_when_it_last_changed_and_the_same_on_every_request(app):
    client = TestClient(app)
    first = client.get(CARD, headers={"Host": "localhost"}).headers["last-modified"]
    again = client.get(CARD, headers={"Host": "edge"}).headers["last-modified"]
    assert first == again and first.endswith(" GMT"), first  # an HTTP date, not the request's


# A JSON-RPC request to a path not served got the course's 404 body, which a JSON-RPC client cannot
# read as an answer (the A2A compatibility kit's JSONRPC-FMT-001).
BEARER = {"Authorization": "Bearer not-a-real-token", "Host": "localhost"}


@pytest.mark.parametrize("path", ["/", "/a2a/jsonrpc/v1/rpc", "/a2a/json-rpc"])
def test_a_json_rpc_request_to_a_path_not_served_gets_a_json_rpc_error(app, path):
    sent = {"jsonrpc": "2.0", "id": 7, "method": "SendMessage", "params": {}}
    response = TestClient(app).post(path, json=sent, headers=BEARER)
    assert response.status_code == 404, response.text
    answer = response.json()
    assert answer["jsonrpc"] == "2.0" and answer["id"] == 7, answer
    assert answer["error"]["code"] == -32601 and "/a2a/jsonrpc" in answer["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [b'{"not": "json-rpc"}', b"not json at all", b"[" * 50_000, b'{"jsonrpc": "2.0", "id": {}}'],
    ids=["other-json", "not-json", "deep", "odd-id"],
)
def test_anything_else_at_a_path_not_served_keeps_the_courses_404(app, body):
    response = TestClient(app).post("/a2a/json-rpc", content=body, headers=BEARER)
    if body.startswith(b'{"jsonrpc"'):  # a JSON-RPC request still, whose id cannot be sent back
        assert response.status_code == 404 and response.json()["id"] is None, response.text
    else:
        assert_error(response, 404, "not_found")


def test_the_json_rpc_endpoint_answers_with_a_trailing_slash_too(app):
    """The compatibility kit's client joins "/" to the card's URL, as httpx's base_url does: the
    request reaches the SDK's JSON-RPC route (its own error for an unknown method), not a 404."""
    sent = {"jsonrpc": "2.0", "id": 3, "method": "NoSuchMethod", "params": {}}
    headers = {**BEARER, "A2A-Version": "1.0"}
    for path in ("/a2a/jsonrpc", "/a2a/jsonrpc/"):
        response = TestClient(app).post(path, json=sent, headers=headers)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["error"]["code"] == -32601, response.text
        assert "endpoint at this path" not in response.text
