"""The research agent package is where lesson 02's steps arrive: offline, on the questions the
lesson's doc asks, the last step (code/lesson02/step5_cache.py) and the package's app answer alike:
the same answer, searches, sources and token count as JSON, and the same events in the same order on
the stream (tool, token..., final, [DONE]), uncached and then from the cache. Only the request id,
which the package's request-id layer adds, may differ."""

import re

from fastapi.testclient import TestClient

from support.lessons import ROOT
from tests.support.sse import parse_sse

DOC = ROOT / "docs" / "02-research-agent.md"
VOLATILE = {"request_id"}  # the package's request ids (asgi-correlation-id): new every request


def docs_questions() -> list[str]:
    """Every question the lesson's doc asks (`"query": "...?"`)."""
    return sorted(set(re.findall(r'"query": "([^"]+\?)"', DOC.read_text(encoding="utf-8"))))


def without_volatile(value):
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def answer(client: TestClient, query: str) -> dict:
    response = client.post("/v1/research", json={"query": query})
    assert response.status_code == 200, response.text
    return without_volatile(response.json())


def events(client: TestClient, query: str) -> list[tuple[str, object]]:
    response = client.post("/v1/research/stream", json={"query": query})
    assert response.status_code == 200, response.text
    parsed = parse_sse(response.text)
    assert parsed and parsed[-1].data == "[DONE]", response.text
    return [
        (e.event, without_volatile(e.json()) if e.event != "message" else e.data) for e in parsed
    ]


def test_the_last_step_and_the_package_answer_the_docs_questions_alike(
    load_step, client_for, fresh_redis
):
    questions = docs_questions()
    assert "What does docker stop do?" in questions, questions
    step = load_step(5, REDIS_URL=fresh_redis.url)
    with (
        TestClient(step.app) as lesson,
        client_for(REDIS_URL=fresh_redis.url) as package,
    ):
        for query in questions:
            # The stream first, with nothing cached: the run as it happens.
            streamed = events(package, query)
            assert events(lesson, query) == streamed, query
            names = [name for name, _ in streamed]
            assert names[0] == "tool" and names[-2:] == ["final", "message"], names
            assert set(names[1:-2]) == {"token"} and len(names) > 10, names
            final = streamed[-2][1]
            assert final["response"].startswith("Offline research model") and final["sources"]
            assert final["cached"] is False and final["tokens_used"] > 0
            # Then JSON: the answer the stream left in each one's cache...
            cached = answer(package, query)
            assert answer(lesson, query) == cached, query
            assert cached["cached"] is True and cached["tokens_used"] == 0
            assert cached | {"cached": False, "tokens_used": final["tokens_used"]} == final
            # ...and from the cache, the stream: the whole answer as one token, then final.
            assert events(lesson, query) == events(package, query), query
        assert fresh_redis.command("FLUSHALL").startswith(b"+OK")
        for query in questions:  # and JSON with nothing cached
            first = answer(package, query)
            assert answer(lesson, query) == first, query
            assert first["cached"] is False and first["steps"][0]["status"] == "success"
