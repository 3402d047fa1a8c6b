"""The worker entry point (research-agent/research_agent/worker/worker.py), run in-process against a
real Redis, and the offline model's variations: visibly different answers, the same answer every
time."""

import asyncio
import json

import pytest
import redis
from pydantic import ValidationError

from lesson05.presets import PRESETS
from research_agent.agent import ResearchAgent
from research_agent.settings import Settings
from research_agent.worker import worker
from research_agent.worker.job import ExitCode, worker_events_key
from research_agent.worker.styles import StyledOfflineModel
from support.ports import free_port
from tests.support.variation_workers import NO_DOCS  # the bundled notes only

QUERY = "How do I stop a container gracefully?"
RUN_ID = "0123456789abcdef"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def job(redis_url: str, **overrides) -> worker.WorkerSettings:
    values = {
        "RUN_ID": RUN_ID,
        "VARIATION": 1,
        "QUERY": QUERY,
        "REDIS_URL": redis_url,
        "OFFLINE_TOKEN_DELAY_MS": 0,
        "DOCS_DIR": str(NO_DOCS),
        **overrides,
    }
    return worker.WorkerSettings(**values)


def stream(redis_url: str, run_id: str = RUN_ID) -> list[tuple[str, dict]]:
    """What variation 1 wrote: its own stream (the API copies it into the run's)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = client.xrange(worker_events_key(run_id, 1))
    return [(f["event"], json.loads(f["data"])) for _, f in entries]


def test_worker_streams_the_agents_events_then_exits_0(redis_url):
    assert asyncio.run(worker.run(job(redis_url))) == ExitCode.ANSWERED
    events = stream(redis_url)
    names = [name for name, _ in events]
    assert names[0] == "worker_ready" and names[-2:] == ["final", "worker_stats"]
    assert {"tool", "token"} <= set(names)
    assert all(data["variation"] == 1 for _, data in events)
    ready = events[0][1]
    assert ready["model"] == "offline-research-model" and ready["import_ms"] >= 0
    final = dict(events)["final"]
    text = "".join(data["text"] for name, data in events if name == "token")
    assert text == final["response"] and final["query"] == QUERY and final["sources"]
    stats = events[-1][1]
    assert stats["process_peak_mb"] > 10


def test_a_token_budget_is_reported_never_dropped_silently(redis_url):
    assert asyncio.run(worker.run(job(redis_url, TOKEN_BUDGET=5))) == ExitCode.ANSWERED
    events = stream(redis_url)
    tokens = [data for name, data in events if name == "token"]
    truncated = [data for name, data in events if name == "truncated"]
    final = dict(events)["final"]
    assert len(tokens) == 5 and len(truncated) == 1
    total = len(final["response"].split())  # the offline model streams one word per token
    assert truncated[0]["tokens_not_streamed"] == total - 5
    assert "token budget of 5" in truncated[0]["reason"]


def test_a_failed_research_publishes_an_error_and_exits_1(redis_url):
    settings = job(redis_url, OFFLINE_TOKEN_DELAY_MS=200, REQUEST_TIMEOUT_SECONDS=0.3)
    assert asyncio.run(worker.run(settings)) == ExitCode.FAILED
    events = stream(redis_url)
    errors = [data["error"] for name, data in events if name == "error"]
    assert errors and errors[0]["type"] == "timeout" and "0.3 s" in errors[0]["message"]
    assert "final" not in dict(events)


def test_an_invalid_job_exits_2_and_publishes_nothing(redis_url, monkeypatch, caplog):
    monkeypatch.setenv("RUN_ID", "not a run id; rm -rf /")
    monkeypatch.setenv("VARIATION", "1")
    monkeypatch.setenv("QUERY", QUERY)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert worker.main() == ExitCode.INVALID_JOB
    assert "RUN_ID" in caplog.text and "rm -rf" not in caplog.text
    assert stream(redis_url, "notarunid") == []


def test_no_redis_exits_3(caplog):
    settings = job(f"redis://127.0.0.1:{free_port()}/0")
    assert asyncio.run(worker.run(settings)) == ExitCode.NO_REDIS
    assert "cannot reach Redis" in caplog.text


def answer(variation: dict, query: str = QUERY) -> str:
    settings = Settings(
        DOCS_DIR=NO_DOCS, OFFLINE_TOKEN_DELAY_MS=0, SEARCH_MAX_RESULTS=variation["search_depth"]
    )
    model = StyledOfflineModel(style=variation["style"], temperature=variation["temperature"])
    agent = ResearchAgent(settings, model=model)
    return asyncio.run(agent.research(query))["response"]


@pytest.mark.parametrize(
    "query", [QUERY, "Why use a multi-stage Docker build?", "What does a health check do?"]
)
def test_the_presets_give_different_answers_and_the_same_ones_every_time(query):
    presets = [p.model_dump() for p in PRESETS]
    answers = [answer(p, query) for p in presets]
    assert len(set(answers)) == len(presets), "two presets gave the same answer"
    assert [answer(p, query) for p in presets[:3]] == answers[:3]


def test_styles_shape_the_answer():
    base = {"temperature": 0.0, "search_depth": 4}
    bullets = answer({**base, "style": "bullets"})
    brief = answer({**base, "style": "brief"})
    detailed = answer({**base, "style": "detailed"})
    assert bullets.count("\n- ") == 3 and brief.count("[") == 1 and "in short:" in brief
    assert detailed.count("\n\n") == 4  # after the header, one paragraph per source read
    assert bullets == answer({**base, "style": "bullets", "temperature": 0.0})


def test_the_worker_holds_its_job_and_the_agents_settings(monkeypatch):
    """Each read from the environment; a name the job reads goes to the job (REDIS_URL: the
    worker's own Redis user), any other to the agent's settings."""
    monkeypatch.setenv("REDIS_URL", "redis://environment")
    settings = worker.WorkerSettings(
        RUN_ID="0123456789abcdef",
        VARIATION=2,
        QUERY="q?",
        REDIS_URL="redis://worker@redis",
        TEMPERATURE=0.9,
        RATE_LIMIT="off",
    )
    assert settings.job.VARIATION == 2 and settings.job.REDIS_URL == "redis://worker@redis"
    assert settings.agent.TEMPERATURE == 0.9 and not settings.agent.access.rate_limit_enabled
    with pytest.raises(ValidationError) as raised:
        worker.WorkerSettings(RUN_ID="not a run id", VARIATION=2, QUERY="q?")
    assert [error["loc"] for error in raised.value.errors()] == [("job", "RUN_ID")]
