"""Lesson 02's steps (code/lesson02/step*.py): each runs and answers offline, each keeps the names
of the step it builds on, and the middleware of step 2, the limits of step 3 and the cache of step 5
do what the doc says.

Steps 1 to 3 are scripts; steps 4 and 5 serve step 3's agent, which they load from its file (step 4
is the API, step 5 the API with a Redis cache), so an edit of step 3 is what they serve. The doc's
commands for the scripts and for the cache are run here as written, and their output compared with
the doc's.
"""

import ast
import asyncio
import importlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from support.lessons import ROOT, run_module, step_file, step_files
from support.ports import free_port
from support.server import offline_environment
from tests.support.sse import parse_sse
from tests.support.steps import removed_and_added

DOC = ROOT / "docs" / "02-research-agent.md"
QUESTION = "What does docker stop do?"
MARKER = "<!-- checked-by: tests/lesson_02/test_steps.py -->"


def source(path: str | Path) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


def top_level_names(text: str) -> dict[str, ast.stmt]:
    names = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return names


# --- The steps and the module between them ------------------------------------------------------


LOADS_STEP_3 = "from lesson02 import step3_limits as step3"


def test_the_lesson_has_five_steps_and_the_api_steps_load_step_3s_agent_from_its_file():
    assert [path.name[4] for path in step_files("02")] == ["1", "2", "3", "4", "5"]
    assert step_file("02", 3).name == "step3_limits.py"
    for k in (4, 5):
        assert source(step_file("02", k)).count(LOADS_STEP_3) == 1
    steps = [path.name for path in step_files("02")]  # and no copy of a step to keep equal:
    folder = sorted(p.name for p in (ROOT / "code" / "lesson02").glob("*.py"))
    assert folder == ["__init__.py", *steps]


def test_the_api_step_serves_step_3s_file_read_anew_with_each_load(load_step):
    step = load_step(4)
    assert step.step3.__file__ == str(step_file("02", 3)) and step.step3.MAX_MODEL_CALLS == 5
    assert load_step(4, MAX_MODEL_CALLS=1).step3.MAX_MODEL_CALLS == 1


# (step, the step it builds on): its diff against that step is its idea.
BUILDS_ON = [(2, 1), (3, 2), (5, 4)]


@pytest.mark.parametrize("after, before", BUILDS_ON)
def test_a_step_keeps_every_name_and_signature_of_the_step_it_builds_on(after, before):
    old, new = (
        top_level_names(source(step_file("02", before))),
        top_level_names(source(step_file("02", after))),
    )
    assert set(old) <= set(new), f"step {after} drops {sorted(set(old) - set(new))}"
    for name, node in old.items():
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            old_args = [a.arg for a in node.args.args]
            assert [a.arg for a in new[name].args.args][: len(old_args)] == old_args, name


# How many code lines a step may change or take away from the one it builds on: step 2 passes the
# run to result() and research(); step 3 adds a middleware and indents the run under its deadline;
# step 5 keeps the answer of step 4's routes to cache it.
MOST_REMOVED = {(2, 1): 6, (3, 2): 3, (5, 4): 2}


@pytest.mark.parametrize("after, before", BUILDS_ON)
def test_a_step_mostly_adds_to_the_step_it_builds_on(after, before):
    removed, added = removed_and_added(
        source(step_file("02", before)), source(step_file("02", after))
    )
    assert len(removed) <= MOST_REMOVED[(after, before)], "\n".join(removed)
    assert len(added) > 2 * len(removed)


def test_steps_4_and_5_use_only_names_step_3_defines():
    defined = set(top_level_names(source(step_file("02", 3))))
    for k in (4, 5):
        used = set(re.findall(r"\bstep3\.(\w+)", source(step_file("02", k))))
        assert used and used <= defined, f"step {k}: {sorted(used - defined)}"


# --- Steps 1 to 3: scripts -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_script_steps_answer_citing_the_notes(load_step, k):
    answer = asyncio.run(load_step(k).research(QUESTION))
    assert answer["response"].startswith("Offline research model")
    assert answer["sources"][0]["url"] == "notes/graceful-shutdown.md#what-happens-on-docker-stop"
    assert "[1]" in answer["response"] and answer["tokens_used"] > 0


def test_step_2_records_each_search_and_numbers_sources_once_per_run(load_step):
    step = load_step(2)
    run = step.Run()
    first, second = {"url": "a", "title": "A"}, {"url": "b", "title": "B"}
    assert [run.number(s) for s in (first, second, {"url": "a", "title": "A again"})] == [1, 2, 1]
    assert run.sources == [first, second]
    answer = asyncio.run(step.research(QUESTION))
    assert answer["steps"] == [
        {"tool": "search_docs", "input": QUESTION, "status": "success", "sources": [1, 2, 3, 4],
         "error": None}
    ]  # fmt: skip


def test_step_2_turns_a_failed_search_into_a_message_the_model_reads(load_step):
    step = load_step(2)

    def broken(query: str, k: int) -> list[dict]:
        raise ConnectionError("the index is gone")

    step.notes.search = broken
    answer = asyncio.run(step.research(QUESTION))
    assert answer["steps"][0]["status"] == "error"
    assert answer["steps"][0]["error"] == "ConnectionError('the index is gone')"
    assert "cannot answer from sources" in answer["response"] and answer["sources"] == []


def test_step_3s_deadline_ends_a_run_that_takes_too_long(load_step):
    step = load_step(3, REQUEST_TIMEOUT_SECONDS=0)
    with pytest.raises(TimeoutError):
        asyncio.run(step.research(QUESTION))
    assert asyncio.run(load_step(2, REQUEST_TIMEOUT_SECONDS=0).research(QUESTION))["sources"]


def test_step_3_stops_calling_the_model_at_max_model_calls(load_step):
    unbounded = asyncio.run(load_step(2, MAX_MODEL_CALLS=1).research(QUESTION))
    assert "limit" not in unbounded["response"]
    answer = asyncio.run(load_step(3, MAX_MODEL_CALLS=1).research(QUESTION))
    assert "Model call limits exceeded" in answer["response"]
    assert answer["steps"][0]["status"] == "success"  # the search ran; no turn was left to answer


# --- Steps 4 and 5: the API, and its cache -------------------------------------------------------


def stream_events(client: TestClient, query: str = QUESTION) -> list[tuple[str, object]]:
    response = client.post("/v1/research/stream", json={"query": query})
    assert response.status_code == 200, response.text
    assert response.headers["x-accel-buffering"] == "no"
    events = parse_sse(response.text)
    return [(e.event, e.data if e.event == "message" else e.json()) for e in events]


def test_step_4_answers_as_json_and_as_a_stream_of_events(load_step):
    with TestClient(load_step(4).app) as client:
        answer = client.post("/v1/research", json={"query": QUESTION}).json()
        events = stream_events(client)
        assert client.post("/v1/research", json={"query": "hi"}).status_code == 422
    names = [name for name, _ in events]
    assert (
        names[0] == "tool" and set(names[1:-2]) == {"token"} and names[-2:] == ["final", "message"]
    )
    assert events[0][1]["sources"][0]["n"] == 1 and events[0][1]["status"] == "success"
    assert "".join(data["text"] for name, data in events if name == "token") == answer["response"]
    assert events[-2][1] == answer and events[-1][1] == "[DONE]"


def test_step_4_ends_a_late_run_with_a_504_or_an_error_event(load_step):
    with TestClient(load_step(4, REQUEST_TIMEOUT_SECONDS=0).app) as client:
        late = client.post("/v1/research", json={"query": QUESTION})
        events = stream_events(client)
    timed_out = {"error": {"type": "timeout", "message": "research took longer than its deadline"}}
    assert late.status_code == 504 and late.json() == timed_out
    assert events == [("error", timed_out), ("message", "[DONE]")]


def test_step_4_streams_a_failed_search_and_the_answer_that_follows(load_step):
    with TestClient(load_step(4, SEARCH_TIMEOUT_SECONDS=0).app) as client:
        events = stream_events(client)
    tool, final = events[0][1], events[-2][1]
    assert tool["status"] == "error" and tool["error"] == "timed out after 0 s"
    assert "cannot answer from sources" in final["response"] and final["sources"] == []


def test_step_4_reports_a_crash_inside_the_stream_without_its_details(load_step, caplog):
    step = load_step(4)

    def crash(*args):
        raise RuntimeError("a secret the client must not see")

    step.step3.result = crash
    with TestClient(step.app) as client:
        events = stream_events(client)
    error = {"error": {"type": "internal_error", "message": "Internal server error"}}
    assert events[-2:] == [("error", error), ("message", "[DONE]")]
    assert "a secret" not in json.dumps(events) and "a secret" in caplog.text


def test_step_5_answers_a_question_asked_again_from_redis(load_step, fresh_redis):
    with TestClient(load_step(5, REDIS_URL=fresh_redis.url).app) as client:
        first = client.post("/v1/research", json={"query": QUESTION}).json()
        again = client.post("/v1/research", json={"query": f"  {QUESTION.replace(' ', '   ')} "})
        streamed = stream_events(client)
    assert first["cached"] is False and first["tokens_used"] > 0
    assert again.json() == first | {
        "query": f"  {QUESTION.replace(' ', '   ')} ",
        "cached": True,
        "tokens_used": 0,
    }
    assert streamed == [
        ("token", {"text": first["response"]}),
        ("final", first | {"cached": True, "tokens_used": 0}),
        ("message", "[DONE]"),
    ]
    kept = redis.Redis.from_url(fresh_redis.url)
    (key,) = kept.keys()
    assert key.startswith(b"lesson02:answer:") and 3500 < kept.ttl(key) <= 3600


@pytest.mark.parametrize("redis_state", ["down", "frozen"])
def test_step_5_answers_without_a_redis_that_is_down_or_frozen(
    load_step, fresh_redis, caplog, redis_state
):
    url = fresh_redis.url if redis_state == "frozen" else f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(load_step(5, REDIS_URL=url).app) as client:
        if redis_state == "frozen":
            fresh_redis.freeze()  # the port accepts, nothing answers: each call waits 0.5 s
        try:
            answers = [client.post("/v1/research", json={"query": QUESTION}) for _ in range(2)]
            streamed = stream_events(client)
        finally:
            fresh_redis.thaw()
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["cached"] for a in answers] == [False, False]
    assert streamed[-2][1]["cached"] is False and streamed[-1][1] == "[DONE]"
    assert "redis unavailable, cache bypassed" in caplog.text
    assert "redis unavailable, answer not cached" in caplog.text


# --- The commands the doc shows, run as written --------------------------------------------------


def checked_commands() -> list[tuple[str, str]]:
    """(command, the output the doc shows after it) of each block the doc says this file checks."""
    text = DOC.read_text(encoding="utf-8")
    pattern = re.escape(MARKER) + r"\n```bash\n(.*?)```\n\n[^`]*?```text\n(.*?)```"
    return re.findall(pattern, text, flags=re.S)


def matches(expected: str, actual: str) -> bool:
    """Line by line; a line `...` stands for any lines, `...` in a line for any characters."""
    wanted, got = expected.strip("\n").split("\n"), actual.strip("\n").split("\n")
    if not wanted or wanted == [""]:
        return got == [""]
    if wanted[0] == "...":
        return any(matches("\n".join(wanted[1:]), "\n".join(got[i:])) for i in range(len(got) + 1))
    line = re.compile(".*".join(map(re.escape, wanted[0].split("..."))) + r"\Z")
    return (
        bool(got)
        and bool(line.match(got[0].rstrip()))
        and matches("\n".join(wanted[1:]), "\n".join(got[1:]))
    )


def test_the_output_check_fails_on_a_different_output():
    assert matches("a\n...\nd", "a\nb\nc\nd") and matches("a ... d", "a b c d")
    assert not matches("a\n...\nd", "a\nb\nc") and not matches("a\nb", "a\nb\nc")


def make_commands() -> list[tuple[str, str]]:
    return [(c, out) for c, out in checked_commands() if c.strip().split()[-2:][0] == "lesson-02"]


def test_the_doc_shows_the_commands_of_the_script_steps():
    commands = [command.strip() for command, _ in make_commands()]
    assert commands == [
        "make lesson-02 STEP=1",
        "make lesson-02 STEP=2",
        "SEARCH_TIMEOUT_SECONDS=0 make lesson-02 STEP=2",
        "MAX_MODEL_CALLS=1 make lesson-02 STEP=3",
    ]


@pytest.mark.parametrize(
    "command, expected", make_commands(), ids=[command.strip() for command, _ in make_commands()]
)
def test_a_script_step_prints_what_the_doc_shows(command, expected):
    # -o: a `.venv` older than the lock is not reinstalled under the other tests' feet.
    as_run = command.strip().replace("make ", "make --no-print-directory -o .venv/.lessons ", 1)
    env = {k: v for k, v in offline_environment().items() if k != "QUESTION"}  # the doc's own
    result = subprocess.run(
        ["bash", "-c", as_run],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert matches(expected, result.stdout), f"--- doc\n{expected}\n--- printed\n{result.stdout}"


def test_step_5s_commands_print_what_the_doc_shows(server_process, fresh_redis):
    (command, expected), *_ = [
        (c, out) for c, out in checked_commands() if "/v1/research" in c and "for i" in c
    ]
    server = server_process(
        [sys.executable, *run_module(step_file("02", 5))], cwd=ROOT, REDIS_URL=fresh_redis.url
    )
    as_run = command.replace("localhost:8000", f"localhost:{server.port}")
    result = subprocess.run(["bash", "-c", as_run], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert matches(expected, result.stdout), f"--- doc\n{expected}\n--- printed\n{result.stdout}"
    # Redis stopped: the same question is answered at full cost, and the server says why.
    fresh_redis.stop()
    again = httpx.post(f"{server.url}/v1/research", json={"query": QUESTION}, timeout=60)
    assert again.status_code == 200 and again.json()["cached"] is False
    assert "redis unavailable, cache bypassed" in server.log_text()


def test_make_lesson_02_runs_a_step_with_step_and_the_package_without():
    def dry_run(*args: str) -> subprocess.CompletedProcess:
        make = ["make", "--no-print-directory", "-o", ".venv/.lessons", "-n", "lesson-02", *args]
        return subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert dry_run().stdout.rstrip().endswith("cd research-agent && ../.venv/bin/python main.py")
    script = dry_run("STEP=1").stdout
    assert script.rstrip().endswith(".venv/bin/python -m lesson02.step1_agent")
    assert "Swagger UI" not in script  # a script: no banner
    assert "Swagger UI" not in dry_run("STEP=3").stdout  # the last script
    server = dry_run("STEP=4").stdout
    assert "Lesson 02 step 4 on http://" in server and "/v1/research" in server
    assert server.rstrip().endswith(".venv/bin/python -m lesson02.step4_api")
    wrong = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.lessons", "lesson-02", "STEP=9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode != 0 and "the steps are STEP=1 to STEP=5" in wrong.stderr


def test_the_challenge_line_is_what_turns_a_failed_search_into_an_answer(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    challenge = text[
        text.index("## Challenge") : text.index("<details>", text.index("## Challenge"))
    ]
    line, replacement = re.search(r"change the line\s+`([^`]+)` to\s+`([^`]+)`", challenge).groups()
    step = source(step_file("02", 3))
    assert step.count(line) == 1, f"{step_file('02', 3)} has no line {line!r}"
    broken = tmp_path / "step3.py"
    broken.write_text(step.replace(line, replacement), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(broken)],
        env=offline_environment(SEARCH_TIMEOUT_SECONDS=0, OFFLINE_TOKEN_DELAY_MS=0),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "\nTimeoutError\nDuring task with name 'tools'" in result.stderr, result.stderr


# --- What the doc and the README say about the package -------------------------------------------


def test_the_first_screen_names_no_later_lesson():
    text = DOC.read_text(encoding="utf-8")
    first_screen = text[: text.index("## 1. ")]
    assert not re.findall(r"[Ll]essons? (?:0[3-9]|10)\b", first_screen)


def test_the_package_logs_ready_then_uvicorns_two_lines_as_the_doc_says(start_agent):
    text = DOC.read_text(encoding="utf-8")
    said = re.search(r"`research agent ready` is followed by uvicorn's own two lines,\s+`([^`]+)`"
                     r" and `([^`]+)`", text)  # fmt: skip
    assert said, "docs/02 no longer says which lines follow `research agent ready`"
    agent = start_agent()
    messages = [json.loads(line)["message"] for line in agent.log_text().splitlines()]
    after = messages[messages.index("research agent ready") + 1 :][:2]
    assert after[0] == said[1] and after[1].startswith(said[2].removesuffix(" ..."))


def test_the_readme_gives_the_offline_delay_each_lesson_uses():
    from chat_model import OfflineChatModel
    from research_agent.settings import AgentSettings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| `OFFLINE_TOKEN_DELAY_MS`")]
    lesson_01 = OfflineChatModel.model_fields["token_delay_ms"].default
    agent = AgentSettings.model_fields["OFFLINE_TOKEN_DELAY_MS"].default
    assert f"| `{lesson_01}`;" in row and f"`{agent}` in lesson 02 and the research agent" in row
    for path in step_files("02"):
        assert f'os.getenv("OFFLINE_TOKEN_DELAY_MS", "{agent}")' in source(path) or (
            LOADS_STEP_3 in source(path)
        )


def test_served_without_the_challenge_line_a_failed_search_passes_for_the_deadline(
    monkeypatch, tmp_path
):
    """What the challenge's solution says of step 4: it serves the changed step 3, as the learner
    runs it (the two files changed as the challenge says, standing in for lesson02's steps)."""
    text = DOC.read_text(encoding="utf-8")
    challenge = text[text.index("## Challenge") :]
    line, replacement = re.search(r"change the line\s+`([^`]+)` to\s+`([^`]+)`", challenge).groups()
    assert "pass for the run's deadline: a 504" in challenge
    monkeypatch.setenv("SEARCH_TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
    package = importlib.import_module("lesson02")
    for k in (3, 4):  # step 3 first: step 4 imports it by name (from lesson02 import step3_limits)
        path = tmp_path / step_file("02", k).name
        path.write_text(source(step_file("02", k)).replace(line, replacement), encoding="utf-8")
        module = types.ModuleType(f"lesson02.{path.stem}")
        module.__file__ = str(path)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setattr(package, path.stem, module, raising=False)
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    step = module
    assert line not in Path(step.step3.__file__).read_text(encoding="utf-8")
    with TestClient(step.app) as client:
        late = client.post("/v1/research", json={"query": QUESTION})
        events = stream_events(client)
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
    assert [name for name, _ in events] == ["error", "message"]
    assert events[0][1]["error"]["type"] == "timeout"
