"""Lesson 11, step 1: one eval, in pytest.

The research agent answers a question its notes answer, through its API, offline. The test checks
how it answered, not only that it did: it searched, the answer says what the note says, and it
cites that note, which exists.

Run it:  make lesson-11 STEP=1   (pytest runs this file)
"""

import posixpath
import re
import sys

import pytest
from fastapi.testclient import TestClient

from lesson11.compose import PLANTED_DIR, app
from research_agent import BUNDLED_NOTES_DIR

SEARCHED = (BUNDLED_NOTES_DIR, PLANTED_DIR)  # sources read notes/x.md#part, planted/y.md#part
CASE = {
    "id": "answered-multistage-why",
    "query": "Why use a multi-stage Docker build?",
    "expect": {"facts": [r"final stage"], "cites": ["notes/multi-stage-builds.md"]},
}


def exists(url: str) -> bool:
    path = posixpath.normpath(url.split("#")[0])  # notes/../../x is ../x: in no folder
    return any(path.startswith(f"{d.name}/") and (d.parent / path).is_file() for d in SEARCHED)


def evaluate(case: dict, answer: dict) -> list[tuple[str, bool, str]]:
    """(evaluator, passed, why) for each check of the case."""
    expect, text = case["expect"], answer.get("response", "")
    tools = [step["tool"] for step in answer.get("steps", [])]
    sources = answer.get("sources", [])
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    urls = [sources[n - 1]["url"] for n in sorted(cited) if 0 < n <= len(sources)]
    files = {url.split("#")[0] for url in urls}
    missing = [f for f in expect.get("facts", []) if not re.search(f, text, re.I)]
    checks = [("searched", tools[:1] == ["search_docs"], f"tools {tools}")]
    checks.append(("facts", not missing, f"missing /{missing[0]}/" if missing else "present"))
    if "cites" in expect:
        good = len(urls) == len(cited) and all(map(exists, urls)) and set(expect["cites"]) <= files
        checks.append(("citations", good, f"cites {sorted(files)}"))
    return checks


@pytest.fixture(scope="module")
def client():
    with TestClient(app()) as client:
        yield client


def run(client: TestClient, case: dict) -> list[tuple[str, bool, str]]:
    answer = client.post("/v1/research", json={"query": case["query"]}).json()
    return evaluate(case, answer)


def test_case(client):
    failed = [f"{name}: {why}" for name, passed, why in run(client, CASE) if not passed]
    assert not failed, failed


if __name__ == "__main__":  # pytest on this file alone, quietly, without the repository's options
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-Wignore"]))
