"""Lesson 05's last step and the production API answer alike.

Step 5 (code/lesson05/step5_lifecycle.py, with code/lesson05/container.py) is a small copy of
code/lesson05/variations_api.py. Both are asked docs/05's question with the same three variations,
at the same time, beside the same Redis and network (`scripts/lesson-05.sh up`), each variation in a
real container, and each variation must come out alike: its final answer and its sources, the
names of its events in their order (every token), and how it ended (`variation_done`'s status,
exit code, OOM kill and reason); the run's own events too. The production API is asked with the
commands docs/05 shows for it under Going further, typed into bash as written, and prints what
the doc shows. The steps' presets and limits must be the production API's.
"""

import ast
import contextlib
import json
import re
import sys
import threading

import httpx
import pytest
from httpx_sse import connect_sse

from lesson05.presets import PRESETS
from support.lessons import ROOT, run_module
from tests.support.doc_session import Terminal, differences, section_blocks

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "05-parallel-variations.md"
CONTAINER = ROOT / "code" / "lesson05" / "container.py"
LAST_STEP = "code/lesson05/step5_lifecycle.py"
GOING_FURTHER_SECTION = "Going further"
STREAM_ID = re.compile(r"\b\d{13}-\d+\b")


def constants(path) -> dict:
    """A file's top-level literal constants, read without running it (it would start a Docker
    client and read the lesson's environment)."""
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):  # not a literal: a client, the environment
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


def test_the_steps_presets_are_the_production_apis():
    steps = constants(CONTAINER)["PRESETS"]
    production = [
        {
            "ANSWER_STYLE": p.style,
            "TEMPERATURE": p.temperature,
            "SEARCH_MAX_RESULTS": p.search_depth,
        }
        for p in PRESETS
    ]
    assert steps == production


def test_the_steps_limits_are_the_production_apis(api):
    limits, settings = constants(CONTAINER)["LIMITS"], api.Settings()
    assert limits["mem_limit"] == limits["memswap_limit"] == settings.WORKER_MEMORY
    assert limits["nano_cpus"] == int(settings.WORKER_CPUS * 1e9)
    assert limits["pids_limit"] == settings.WORKER_PIDS
    assert (limits["read_only"], limits["cap_drop"]) == (True, ["ALL"])
    assert limits["security_opt"] == ["no-new-privileges"]


# --- How a run came out ------------------------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) of each event in an SSE stream as curl printed it (comments skipped)."""
    events = []
    for chunk in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        fields = dict(
            line.split(": ", 1) for line in chunk.splitlines() if re.match(r"^(event|data): ", line)
        )
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def came_out(events: list[tuple[str, dict]]) -> dict:
    """What must be alike: the run's own events, and each variation's events in order, answer,
    sources and ending."""
    result = {"run": [name for name, data in events if data["variation"] is None]}
    for name, data in events:
        if data["variation"] is None:
            continue
        variation = result.setdefault(data["variation"], {"events": []})
        variation["events"].append(name)
        if name == "final":
            variation["answer"], variation["sources"] = data["response"], data["sources"]
        elif name == "variation_done":
            variation["ended"] = {k: data.get(k) for k in ("status", "exit_code", "oom_killed")}
            variation["ended"]["reason"] = data.get("reason")
    return result


def unlike(step: dict, production: dict) -> list[str]:
    """Where the step's run came out otherwise than the production API's, one line each."""
    found = []
    for key in sorted(step.keys() | production.keys(), key=str):
        mine, theirs = step.get(key) or {}, production.get(key) or {}
        if key == "run":
            mine, theirs = {"events": mine}, {"events": theirs}
        for field in sorted(mine.keys() | theirs.keys()):
            if mine.get(field) != theirs.get(field):
                where = "the run" if key == "run" else f"variation {key}"
                step_5, api = from_where_they_differ(mine.get(field), theirs.get(field))
                found.append(f"{where}, {field}:\n  step 5:     {step_5}\n  production: {api}")
    return found


def from_where_they_differ(a, b) -> tuple[str, str]:
    """Two texts or lists shown from their first difference on (a few items of each)."""
    if not (isinstance(a, str | list) and type(a) is type(b)):
        return repr(a), repr(b)
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    n = 80 if isinstance(a, str) else 6
    return tuple(f"[{i}:] of {len(side)}: {side[i : i + n]!r}" for side in (a, b))


def test_what_is_compared_tells_a_different_answer_order_or_ending():
    events = [
        ("run_started", {"variation": None}),
        ("token", {"variation": 0, "text": "a"}),
        ("final", {"variation": 0, "response": "a", "sources": [{"title": "t"}]}),
        ("variation_done", {"variation": 0, "status": "succeeded", "exit_code": 0}),
        ("run_done", {"variation": None, "status": "done"}),
    ]
    assert came_out(events) == came_out(list(events)) and not unlike(
        came_out(events), came_out(events)
    )
    other = [*events[:2], ("final", {"variation": 0, "response": "b", "sources": [{"title": "t"}]})]
    assert came_out(other + events[3:]) != came_out(events)
    assert unlike(came_out(other + events[3:]), came_out(events))[0].startswith(
        "variation 0, answer"
    )
    assert came_out([events[0], events[2], events[1], *events[3:]]) != came_out(events)
    failed = ("variation_done", {"variation": 0, "status": "failed", "exit_code": 137})
    assert came_out([*events[:3], failed, events[4]]) != came_out(events)
    text = 'event: final\r\ndata: {"variation": 0}\r\nid: 1-0\r\n\r\n: ping\n\nevent: run_done\n'
    text += 'data: {"variation": null}\n'
    assert parse_sse(text) == [("final", {"variation": 0}), ("run_done", {"variation": None})]


# --- Both, for real ----------------------------------------------------------------------------


def production_block():
    """The doc's commands for the production API, and what it shows them print."""
    blocks = section_blocks(DOC, GOING_FURTHER_SECTION)
    i = next(i for i, b in enumerate(blocks) if b.body.startswith("RUN_JSON=$(curl"))
    assert blocks[i].mark == "checked-by: tests/lesson_05/test_alike.py"
    return blocks[i], blocks[i + 1]


def ask_the_step(url: str, body: dict, found: dict) -> None:
    run_id = httpx.post(f"{url}/v1/runs", json=body, timeout=60).json()["run_id"]
    with (
        httpx.Client(base_url=url, timeout=300) as client,
        connect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source,
    ):
        found["events"] = [(e.event, json.loads(e.data)) for e in source.iter_sse() if e.data]


def test_the_last_step_and_the_production_api_answer_the_docs_question_alike(
    stack, api_process, server_process, tmp_path
):
    block, shown = production_block()
    body = json.loads(re.search(r"-d '(\{.*?\})'", block.body)[1])
    assert body == {"query": "How do I stop a container gracefully?", "variations": 3}
    production = api_process(OFFLINE_TOKEN_DELAY_MS=15)  # the workers' own default, as the step's
    step = server_process(
        [sys.executable, *run_module(LAST_STEP)], cwd=ROOT, ready_path="/openapi.json",
        ready_timeout=120,
        **stack, WORKER_IMAGE=production.env["WORKER_IMAGE"],
    )  # fmt: skip
    found: dict = {}
    asking = threading.Thread(target=ask_the_step, args=(step.url, body, found))
    asking.start()
    terminal = Terminal(ROOT, production.env)
    try:
        typed = block.body.replace("localhost:8000", f"localhost:{production.port}")
        printed, status = terminal.run(typed, timeout=300)
    finally:
        terminal.close()
        asking.join(300)
    assert status == 0, printed
    assert not differences(*(STREAM_ID.sub("<id>", t) for t in (shown.body, printed))), printed
    step_came_out = came_out(found["events"])
    production_came_out = came_out(parse_sse(printed.split("\n", 1)[1]))
    assert not (problems := unlike(step_came_out, production_came_out)), "\n".join(problems)
    assert [step_came_out[i]["ended"]["status"] for i in range(3)] == ["succeeded"] * 3
