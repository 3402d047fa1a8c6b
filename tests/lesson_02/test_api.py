"""End to end over HTTP with the offline model and the local search: the happy paths."""

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from research_agent.app import create_app
from research_agent.search import _slug, split_sections
from research_agent.settings import REPO_DOCS_DIR, Settings, variables
from support.lessons import AGENT_DIR
from tests.support.agent import make_settings
from tests.support.metrics import metric
from tests.support.sse import json_events, parse_sse

QUESTION = "Why use a multi-stage Docker build?"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/health", {"status": "ok", "version": "1.0.0"}),
        ("/ready", {"status": "ready", "cache": "disabled"}),  # once the agent is built
    ],
)
def test_health_and_ready_report_the_model_and_backend(client, path, expected):
    response = client.get(path)
    assert response.status_code == 200
    model = {"model": "offline-research-model", "search_backend": "local"}
    assert response.json() == expected | model


def test_research_answers_offline_citing_bundled_notes(client):
    response = client.post("/v1/research", json={"query": QUESTION})

    assert response.status_code == 200
    body = response.json()
    assert body["query"] == QUESTION
    assert body["model"] == "offline-research-model"
    assert body["response"].startswith("Offline research model")
    assert "[1]" in body["response"] and "[2]" in body["response"]
    assert body["sources"][0]["url"] == "notes/multi-stage-builds.md#why-use-a-multi-stage-build"
    assert "multi-stage build" in body["sources"][0]["snippet"]
    assert body["steps"] == [
        {
            "tool": "search_docs",
            "input": QUESTION,
            "status": "success",
            "sources": list(range(1, len(body["sources"]) + 1)),
            "error": None,
        }
    ]
    assert body["tokens_used"] > 0
    assert body["cached"] is False
    assert body["request_id"] == response.headers["x-request-id"]


def test_every_source_is_a_real_file_and_section(client_for):
    with client_for(DOCS_DIR=str(REPO_DOCS_DIR)) as client:  # the course text and the notes
        body = client.post(
            "/v1/research", json={"query": "health checks and graceful shutdown"}
        ).json()
    assert body["sources"]
    for source in body["sources"]:
        path, _, anchor = source["url"].partition("#")
        folder = REPO_DOCS_DIR.parent if path.startswith("docs/") else AGENT_DIR
        headings = re.findall(r"^#{1,3}\s+(.*?)\s*#*$", (folder / path).read_text(), flags=re.M)
        assert source["title"] and source["snippet"]
        assert not anchor or anchor in {_slug(h) for h in headings}, source


def test_the_course_docs_are_searched_when_docs_dir_names_them(client_for):
    lessons = sorted(REPO_DOCS_DIR.rglob("*.md"))
    sections = [s for path in lessons for s in split_sections(path, REPO_DOCS_DIR)]
    section = max(sections, key=lambda s: len(s.text))  # a substantial passage of the course
    with client_for(DOCS_DIR=str(REPO_DOCS_DIR)) as client:
        body = client.post("/v1/research", json={"query": section.title[:200]}).json()
    assert any(source["url"].startswith("docs/") for source in body["sources"]), body["sources"]


def docs_folder(tmp_path, name: str, text: str):
    """A docs/ folder with one Markdown page."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / name).write_text(text)
    return docs


def test_search_indexes_what_a_reader_sees_not_html_comments(client_for, tmp_path):
    docs = docs_folder(
        tmp_path,
        "page.md",
        "# Page\n\n## Layers\n\n"
        "<!-- include: research-agent/Dockerfile#layers -->\n"
        "Every instruction adds a layer to the image. <!-- a note for editors -->\n"
        "<!--\nspanning\nlines\n-->\n",
    )
    (sections,) = [split_sections(docs / "page.md", docs)]
    assert [s.text.strip() for s in sections] == ["Every instruction adds a layer to the image."]
    with client_for(DOCS_DIR=str(docs)) as client:
        body = client.post("/v1/research", json={"query": "instruction layer include"}).json()
    assert body["sources"][0]["snippet"] == "Every instruction adds a layer to the image."
    assert "<!--" not in body["response"] and "include:" not in body["response"]


def test_research_cites_the_course_docs_folder(client_for, tmp_path):
    docs = docs_folder(
        tmp_path,
        "lesson-02.md",
        "# Lesson 2: images\n\n## Distroless images\n\n"
        "A distroless image contains the Python runtime and nothing else: "
        "no shell, no package manager.\n",
    )
    with client_for(DOCS_DIR=str(docs)) as client:
        body = client.post("/v1/research", json={"query": "What is a distroless image?"}).json()

    assert body["sources"][0] == {
        "title": "Lesson 2: images / Distroless images",
        "url": "docs/lesson-02.md#distroless-images",
        "snippet": "A distroless image contains the Python runtime and nothing else: "
        "no shell, no package manager.",
    }
    assert "no shell, no package manager. [1]" in body["response"]


def test_by_default_only_the_bundled_notes_are_searched_as_in_the_image():
    assert Settings().docs_dirs == [AGENT_DIR / "notes"]
    assert Settings(DOCS_DIR=str(AGENT_DIR / "notes")).docs_dirs == [AGENT_DIR / "notes"]
    assert Settings(DOCS_DIR=str(REPO_DOCS_DIR)).docs_dirs == [REPO_DOCS_DIR, AGENT_DIR / "notes"]


def test_stream_sends_tool_then_tokens_then_final_then_done(client):
    with client.stream("POST", "/v1/research/stream", json={"query": QUESTION}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = parse_sse(response.read().decode())

    names = [e.event for e in events]
    assert names[0] == "tool"
    assert names[-2:] == ["final", "message"] and events[-1].data == "[DONE]"
    tokens = json_events(events, "token")
    assert len(tokens) > 10
    (tool,) = json_events(events, "tool")
    assert tool["status"] == "success" and tool["input"] == QUESTION
    assert tool["sources"][0]["n"] == 1 and tool["sources"][0]["url"].startswith(
        "notes/multi-stage-builds.md"
    )
    (final,) = json_events(events, "final")
    assert final["response"] == "".join(t["text"] for t in tokens)
    assert final["sources"][0]["url"] == tool["sources"][0]["url"]
    assert final["tokens_used"] > 0 and final["cached"] is False
    assert final["request_id"] == response.headers["x-request-id"]
    # `final` is exactly what POST /v1/research answers (fields, order, nulls), bar the request id.
    answer = client.post("/v1/research", json={"query": QUESTION}).json()
    assert list(final) == list(answer)
    assert {**final, "request_id": "-"} == {**answer, "request_id": "-"}


def test_request_id_is_echoed_or_generated(client):
    given = client.get("/health", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    research = client.post(
        "/v1/research", json={"query": QUESTION}, headers={"X-Request-ID": "trace-43"}
    )
    assert research.json()["request_id"] == "trace-43"

    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/health").headers["x-request-id"]
    # A header that could inject into logs is replaced, not echoed.
    assert (
        client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers[
            "x-request-id"
        ]
        != "bad id"
    )


def test_logs_are_json_lines_with_the_request_id(client, capsys):
    client.post("/v1/research", json={"query": QUESTION}, headers={"X-Request-ID": "log-check"})
    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    mine = [line for line in lines if line["request_id"] == "log-check"]
    done = next(line for line in mine if line["message"] == "research done")
    assert (
        done["model"] == "offline-research-model" and done["steps"] == 1 and done["latency_ms"] >= 0
    )
    access = next(line for line in mine if line["message"] == "request")
    assert access["route"] == "/v1/research" and access["status"] == 200


def test_metrics_move(client):
    requests_before = metric(
        client, "http_requests_total", method="POST", handler="/v1/research", status="200"
    )
    tools_before = metric(client, "agent_tool_calls_total", tool="search_docs", status="success")
    tokens_before = metric(
        client, "agent_tokens_total", model="offline-research-model", kind="output"
    )
    unmatched_before = metric(
        client, "http_requests_total", method="GET", handler="none", status="404"
    )

    client.post("/v1/research", json={"query": QUESTION})
    client.get("/no/such/page/123")
    client.get("/no/such/page/456")

    assert (
        metric(client, "http_requests_total", method="POST", handler="/v1/research", status="200")
        == requests_before + 1
    )
    assert (
        metric(client, "agent_tool_calls_total", tool="search_docs", status="success")
        == tools_before + 1
    )
    assert (
        metric(client, "agent_tokens_total", model="offline-research-model", kind="output")
        > tokens_before
    )
    # Paths no route matches share one label value: the number of series stays bounded.
    assert (
        metric(client, "http_requests_total", method="GET", handler="none", status="404")
        == unmatched_before + 2
    )
    assert "/no/such/page" not in client.get("/metrics").text
    assert (
        metric(client, "http_request_duration_seconds_count", method="POST", handler="/v1/research")
        >= 1
    )


def test_stream_latency_is_measured_to_the_last_byte(client_for):
    # 0.02 s between words and over 100 words: the stream lasts well over a second; its first
    # byte (the tool event) comes long before. A histogram that stopped at the first byte would
    # put it in the 1-second bucket.
    with client_for(OFFLINE_TOKEN_DELAY_MS=20) as client:
        labels = {"method": "POST", "handler": "/v1/research/stream"}
        before = metric(client, "http_request_duration_seconds_bucket", le="1.0", **labels)
        count = metric(client, "http_request_duration_seconds_count", **labels)
        body = client.post("/v1/research/stream", json={"query": QUESTION}).text
        assert len(json_events(parse_sse(body), "token")) > 60
        assert metric(client, "http_request_duration_seconds_count", **labels) == count + 1
        assert metric(client, "http_request_duration_seconds_bucket", le="1.0", **labels) == before


def test_metrics_is_served_at_exactly_metrics(client):
    response = client.get("/metrics", follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "research_cache_hits_total" in response.text


def test_swagger_and_openapi(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/ready", "/v1/research", "/v1/research/stream", "/metrics"} <= set(paths)
    stream = paths["/v1/research/stream"]["post"]["responses"]
    assert list(stream["200"]["content"]) == ["text/event-stream"]
    # FastAPI's own item schema (an event's data, event, id, retry), each event one of the frames
    # of research_agent/schemas.py, with its data's model.
    item = stream["200"]["content"]["text/event-stream"]["itemSchema"]
    assert set(item["properties"]) == {"data", "event", "id", "retry"}
    frames = {ref["$ref"].rsplit("/", 1)[1] for ref in item["oneOf"]}
    assert frames == {"ToolFrame", "TokenFrame", "FinalFrame", "ErrorFrame", "DoneFrame"}
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    for status in ("400", "413", "422", "503"):
        (schema,) = stream[status]["content"]["application/json"].values()
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, status


def test_ready_is_503_until_the_agent_is_built():
    client = TestClient(create_app(make_settings()))  # not entered: the lifespan has not run
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "not_ready"
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    assert client.get("/health").status_code == 200


def test_ready_is_503_while_shutting_down(client):
    client.app.state.shutdown.draining = True
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"] == {
        "type": "not_ready",
        "message": "the server is shutting down",
        "request_id": response.headers["x-request-id"],
    }
    assert client.get("/health").status_code == 200


def test_readme_example_output_is_what_the_service_answers(client_for, tmp_path):
    readme = (AGENT_DIR / "README.md").read_text()
    section = readme.split("## Try it", 1)[1]
    assert '-d \'{"query":"Why use a multi-stage Docker build?"}\'' in section
    expected = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    with client_for(DOCS_DIR=str(tmp_path)) as client:  # only the bundled notes, as in the image
        response = client.post(
            "/v1/research", json={"query": QUESTION}, headers={"X-Request-ID": "readme-example"}
        )
    assert response.json() == expected


def test_readme_documents_every_setting():
    readme = (AGENT_DIR / "README.md").read_text()
    example = (AGENT_DIR / ".env.example").read_text()
    for name in variables():
        assert f"`{name}`" in readme, name
        assert f"{name}=" in example, name


def test_the_app_does_not_import_from_the_course_repository():
    for path in (AGENT_DIR / "research_agent").rglob("*.py"):
        text = path.read_text()
        assert (
            "from code" not in text and "from tests" not in text and "import tests" not in text
        ), path
    assert Path(AGENT_DIR / "main.py").read_text().count("from research_agent.") >= 1
