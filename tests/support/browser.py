"""Debian's headless Chromium, driven by Playwright (never `playwright install`): what the browser
tests of lessons 05, 09 and 10 open their pages in."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def headless_chromium(make_target: str) -> Iterator:
    """A Playwright browser on Debian's chromium; `make_target` is the command that installs it."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: make {make_target} installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # As root Chromium needs --no-sandbox; the resolver rule stops its background lookups.
            args=[
                "--no-sandbox",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()
