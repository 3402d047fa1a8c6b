"""docs/05-parallel-variations.md lists every event the code emits and every setting of the API."""

import re

from support.lessons import ROOT

DOC = (ROOT / "docs" / "05-parallel-variations.md").read_text(encoding="utf-8")
# The lesson and the Going-further modules it imports (code/lesson05/).
SOURCES = [
    ROOT / "code" / "lesson05" / "variations_api.py",
    *sorted((ROOT / "code" / "lesson05").glob("*.py")),
]
API = "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)
WORKER = (ROOT / "research-agent" / "research_agent" / "worker" / "worker.py").read_text(
    encoding="utf-8"
)
AGENT_EVENTS = {"token", "tool", "final"}  # ResearchAgent.stream names, passed on unchanged


def table_rows(heading: str) -> set[str]:
    """The first cells (in backticks) of the table that follows the given column heading."""
    table = DOC[DOC.index(heading) :].split("\n\n", 1)[0]
    cells = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", table, flags=re.M)
    return {name for cell in cells for name in re.findall(r"`(\w+)`", cell)}


def test_the_protocol_table_lists_exactly_the_events_the_code_sends():
    emitted = set(re.findall(r'add_event\(\s*run_id,\s*"(\w+)"', API))
    emitted |= set(re.findall(r"'event', '(\w+)'", API))  # from the Lua script
    emitted |= set(re.findall(r'event="(\w+)"', API))
    emitted |= set(re.findall(r'"event": "(\w+)"', API))  # written in a transaction
    emitted |= set(re.findall(r'send\(\s*"(\w+)"', WORKER)) | AGENT_EVENTS
    assert len(emitted) > 10
    assert table_rows("| Event | From |") == emitted


def test_the_settings_table_lists_every_setting(api):
    assert table_rows("| Setting | Default |") == set(api.Settings.model_fields)
