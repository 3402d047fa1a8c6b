"""Lesson 05's page in a real browser: Debian's headless Chromium driven by Playwright 1.64.

Ask with 3 variations, see 3 columns fill, reload mid-run, see them complete (each column's
streamed text equal to its final answer: nothing lost or repeated by the resume), pick one. Saves a
screenshot to SCREENSHOT (default .build/05-variations.png); `make variations-screenshot` writes the
one the docs show.
Never `playwright install`: the browser is /usr/bin/chromium (make variations-test installs it).
"""

import os
from pathlib import Path

import httpx
import pytest

from support.lessons import ROOT
from support.waiting import wait_for
from tests.support.browser import headless_chromium
from tests.support.docker_cli import docker

pytestmark = pytest.mark.container

QUESTION = "How do I stop a container without losing requests?"


@pytest.fixture
def browser():
    with headless_chromium("variations-test") as browser:
        yield browser


def test_three_columns_fill_survive_a_reload_and_one_is_picked(api_process, stack, browser):
    from playwright.sync_api import expect

    # Two warm workers: two columns say so, the third got a cold container.
    api = api_process(OFFLINE_TOKEN_DELAY_MS=120, WARM_WORKERS=2)
    warm = ["--filter", f"label=ai-course.deployment={stack['DEPLOYMENT']}"]
    warm += ["--filter", "label=ai-course.warm", "--filter", "status=running"]
    wait_for(lambda: len(docker("ps", "-q", *warm).split()) == 2, timeout=60, what="2 warm")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(api.url)
    page.fill("#query", QUESTION)
    page.select_option("#count", "3")
    page.click("#start")

    columns = page.locator(".column")
    expect(columns).to_have_count(3)
    for i in range(3):  # every column is streaming
        expect(columns.nth(i).locator(".answer")).not_to_be_empty(timeout=120_000)
    run_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('run')")
    # The owner token the browser keeps (an HttpOnly cookie: the page's script cannot read it).
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "run_token")
    owner = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{api.url}/v1/runs/{run_id}", headers=owner).json()["status"] == "running", (
        "the run ended before the reload: it must happen mid-run"
    )

    page.reload()
    expect(columns).to_have_count(3)
    for i in range(3):
        column = columns.nth(i)
        expect(column.locator(".status")).to_have_text("succeeded", timeout=120_000)
        expect(column.locator(".check")).to_have_text("stream matches the final answer")
    expect(page.locator("#run-status")).to_contain_text("done")
    timings = sorted(columns.nth(i).locator(".timing").inner_text() for i in range(3))
    assert timings[0].startswith("cold: container started in"), timings
    assert all(t.startswith("warm worker (started ahead)") for t in timings[1:]), timings
    answers = [columns.nth(i).locator(".answer").inner_text() for i in range(3)]
    view = httpx.get(f"{api.url}/v1/runs/{run_id}", headers=owner).json()
    assert [v["response"].strip() for v in view["variations"]] == [a.strip() for a in answers]

    columns.nth(1).locator(".pick").click()
    expect(columns.nth(1).locator(".pick")).to_have_text("Picked")
    assert httpx.get(f"{api.url}/v1/runs/{run_id}", headers=owner).json()["selected"] == 1
    page.reload()  # the pick is stored by the API, not only in the page
    expect(columns.nth(1)).to_have_class("column selected")

    path = Path(os.environ.get("SCREENSHOT", ROOT / ".build" / "05-variations.png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
