"""The approvals page in Debian's headless Chromium (Playwright drives it, never `playwright
install`): the owner's waiting runs, one approved and one edited on the page, both answered."""

import pytest

from tests.lesson_10.conftest import wait_state
from tests.lesson_10.test_durable_api import ANSWER
from tests.support.browser import headless_chromium

pytestmark = pytest.mark.container  # make durable-test (it installs chromium)


@pytest.fixture
def browser():
    with headless_chromium("durable-test") as browser:
        yield browser


def test_approve_and_edit_on_the_page(api, engine, browser):
    from playwright.sync_api import expect

    context = browser.new_context()
    # Runs started from the browser's own cookie jar: the page finds them by its HttpOnly cookie.
    runs = []
    for query in ("What is 2**100?", "What is 3*3?"):
        r = context.request.post(f"{api.url}/v1/runs", data={"query": query})
        assert r.status == 202, r.text()
        runs.append((r.json()["run_id"], r.json()["owner_token"]))
    for run_id, token in runs:
        wait_state(api, run_id, token, "waiting_for_approval")
    assert {c["name"]: c["httpOnly"] for c in context.cookies()} == {"runs_token": True}

    page = context.new_page()
    page.goto(f"{api.url}/approvals")
    calls = page.locator(".call")
    expect(calls).to_have_count(2)
    first = page.locator(f'.call[data-run-id="{runs[0][0]}"]')
    expect(first.locator("textarea")).to_have_value('{\n  "code": "print(2**100)"\n}')
    first.locator("button[name=approve]").click()
    expect(page.locator("#result")).to_contain_text("approve: sent")
    expect(calls).to_have_count(1)

    second = page.locator(f'.call[data-run-id="{runs[1][0]}"]')
    second.locator("textarea").fill('{"code": "print(6 * 7)"}')
    second.locator("button[name=edit]").click()
    expect(page.locator("#result")).to_contain_text("edit: sent")
    expect(calls).to_have_count(0)

    assert ANSWER in wait_state(api, runs[0][0], runs[0][1], "done")["answer"]
    assert "printed 42" in wait_state(api, runs[1][0], runs[1][1], "done")["answer"]
    page.reload()
    expect(page.locator("#status")).to_have_text("Nothing is waiting for you.")
    context.close()
