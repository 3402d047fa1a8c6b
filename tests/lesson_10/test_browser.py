"""The approvals page in Debian's headless Chromium (Playwright drives it, never `playwright
install`), as docs/10 has a learner use it: a run started on the page, waited for and approved
there; a run started with curl, found by pasting its owner token; runs started with the browser's
own cookie, approved and edited. Each ends with its answer on the page."""

import httpx
import pytest

from tests.lesson_10.conftest import wait_state
from tests.lesson_10.test_durable_api import ANSWER
from tests.support.browser import headless_chromium

pytestmark = pytest.mark.container  # make durable-test (it installs chromium)


@pytest.fixture
def browser():
    with headless_chromium("durable-test") as browser:
        yield browser


def test_a_run_started_on_the_page_is_approved_there(api, engine, browser):
    from playwright.sync_api import expect

    context = browser.new_context()  # no cookie yet: the page's own POST /v1/runs sets it
    page = context.new_page()
    page.goto(f"{api.url}/approvals")
    expect(page.locator("#status")).to_have_text("Nothing is waiting for you.")
    page.locator("button[name=start]").click()  # the question the field holds: What is 2**100?
    expect(page.locator("#result")).to_contain_text("waits for your decision", timeout=60_000)
    call = page.locator(".call")
    expect(call).to_have_count(1)
    expect(call.locator("textarea")).to_have_value('{\n  "code": "print(2**100)"\n}')
    assert {c["name"]: c["httpOnly"] for c in context.cookies()} == {"runs_token": True}
    call.locator("button[name=approve]").click()
    expect(page.locator("#result")).to_contain_text(f"done. [offline model] 2**100 = {ANSWER}",
                                                    timeout=60_000)  # fmt: skip
    expect(page.locator("#status")).to_have_text("Nothing is waiting for you.")
    context.close()


def test_a_run_started_with_curl_is_found_by_its_pasted_token(api, engine, browser):
    from playwright.sync_api import expect

    r = httpx.post(f"{api.url}/v1/runs", json={"query": "What is 2**100?"}, timeout=30)
    run_id, token = r.json()["run_id"], r.json()["owner_token"]
    wait_state(api, run_id, token, "waiting_for_approval")
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{api.url}/approvals")
    expect(page.locator("#status")).to_have_text("Nothing is waiting for you.")  # no cookie
    page.locator("input[name=token]").fill(token)
    page.locator("button[name=use-token]").click()
    run = page.locator(f'.call[data-run-id="{run_id}"]')
    expect(run).to_have_count(1)
    run.locator("input[name=message]").fill("not on my machine")
    run.locator("button[name=reject]").click()
    expect(page.locator("#result")).to_contain_text("not on my machine", timeout=60_000)
    assert "not on my machine" in wait_state(api, run_id, token, "done")["answer"]
    assert context.cookies() == []  # the pasted token was sent as a header, never stored
    context.close()


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
    expect(page.locator("#result")).to_contain_text(ANSWER, timeout=60_000)
    expect(calls).to_have_count(1)

    second = page.locator(f'.call[data-run-id="{runs[1][0]}"]')
    second.locator("textarea").fill('{"code": "print(6 * 7)"}')
    second.locator("button[name=edit]").click()
    expect(page.locator("#result")).to_contain_text("printed 42", timeout=60_000)
    expect(calls).to_have_count(0)

    assert ANSWER in wait_state(api, runs[0][0], runs[0][1], "done")["answer"]
    assert "printed 42" in wait_state(api, runs[1][0], runs[1][1], "done")["answer"]
    page.reload()
    expect(page.locator("#status")).to_have_text("Nothing is waiting for you.")
    context.close()


def test_another_page_cannot_frame_the_approvals_page(api, browser):
    """A page of another site (or another port of this one, whose requests carry the owner's
    SameSite cookie) that frames the approvals page to trick a click gets an empty frame."""
    context = browser.new_context()
    page = context.new_page()
    refusals = []
    page.on("console", lambda m: refusals.append(m.text) if "frame" in m.text else None)
    page.set_content(f'<iframe id="approvals" src="{api.url}/approvals"></iframe>')
    frame = page.wait_for_selector("#approvals").content_frame()
    frame.wait_for_load_state()
    assert "Runs waiting for your approval" not in frame.content()
    assert frame.query_selector("#runs") is None
    assert any("frame-ancestors" in text or "X-Frame-Options" in text for text in refusals), (
        refusals
    )
    context.close()
