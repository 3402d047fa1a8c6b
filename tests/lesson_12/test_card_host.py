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
