"""make evals' report in a real browser (Debian's headless Chromium, driven by Playwright): the
page opens from the file alone, offline, with its two plots drawn and the gate's verdict on top.
Saves a screenshot to SCREENSHOT (default .build/11-evals-report.png); `make evals-screenshot`
writes the one docs/11-evals.md shows. Needs chromium, not Docker: it is in the browser suite
(`-m container`), which `make evals-screenshot` runs after installing chromium."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.lessons import ROOT
from support.server import offline_environment
from tests.support.browser import headless_chromium

pytestmark = pytest.mark.container


def test_the_report_opens_offline_with_its_plots_and_the_gates_verdict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lesson11", "--quiet", "--report", str(tmp_path)],
        cwd=ROOT,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = tmp_path / "index.html"
    with headless_chromium("evals-screenshot") as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1560})
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri())
        assert "gate passed" in page.locator("h1").inner_text()
        plots = page.locator("svg")
        assert plots.count() == 2
        for i in range(2):
            box = plots.nth(i).bounding_box()
            assert box and box["width"] > 300 and box["height"] > 100  # drawn, not empty
        assert page.locator("tbody tr").count() > 200  # a row per case and evaluator
        assert requests == [report.as_uri()]  # the page alone: nothing else was fetched
        path = Path(os.environ.get("SCREENSHOT", ROOT / ".build" / "11-evals-report.png"))
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 20_000
