"""A step that leaves a door open says so where it is taught (issue 70 item 13): in its lesson's
core path, in the section of the step, one line that names what is open and what closes it.

Before: docs/05's step 5 (no cap, no Host check: each POST starts up to eight 512 MB
containers), docs/12's steps 1-3 (no token, no Host check: anyone may approve or edit a
run_python call) and docs/08's steps 4-5 (tokens in the code, compared with `==`) taught the
pattern without a word about it."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# doc -> (the heading of the step's section, what its one line must name)
OPEN_STEPS = {
    "docs/05-parallel-variations.md": ("## 5. ", ["no cap", "no Host check", "`guards.py`"]),
    "docs/12-agents-over-a2a.md": ("## 1. ", ["no token", "no Host check", "`a2a_server.py`"]),
    "docs/08-mcp-tools.md": ("## 4. ", ["`==`", "`hmac.compare_digest`"]),
}


def section(doc: str, heading: str) -> str:
    text = (ROOT / doc).read_text(encoding="utf-8")
    core = text.split("\n## Going further", 1)[0]
    start = core.index("\n" + heading)
    end = core.find("\n## ", start + 1)
    return core[start : end if end != -1 else None]


@pytest.mark.parametrize("doc", sorted(OPEN_STEPS))
def test_an_open_step_says_what_it_leaves_open_and_what_closes_it(doc):
    heading, named = OPEN_STEPS[doc]
    text = " ".join(section(doc, heading).split())  # one line may wrap
    missing = [words for words in named if words not in text]
    assert not missing, f"{doc}, section {heading.strip()}: no mention of {missing}"
