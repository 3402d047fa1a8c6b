"""A tool's first use waits for nothing the gateway could have done at start-up: its first call
to a server imports no module (PYTHONPROFILEIMPORTTIME=1 prints a line for every import; none may
come after /health answered). Before lesson08.mcp_gateway.FIRST_CALL_IMPORTS, the first call
imported the upstream client's transport, jsonschema and jsonref: about 0.2 s of a first use."""

import pytest

from support.mcp_servers import gateway

from .conftest import TESTER_TOKEN
from .test_fast_calls import post

pytestmark = pytest.mark.xdist_group("lesson08")


@pytest.mark.parametrize("era", ["handshake", "modern"])
def test_a_first_call_imports_nothing(notes, tmp_path, era):
    catalog = {
        "servers": [{"name": "notes", "url": notes.url + "/mcp", "tools": ["search_notes"]}],
        "clients": {"tester": {"token_env": "TOKEN_TESTER", "tools": ["search_notes"]}},
    }
    with gateway(
        catalog, tmp_path, TOKEN_TESTER=TESTER_TOKEN, PYTHONPROFILEIMPORTTIME="1"
    ) as server:
        started = len(server.log_text())
        answer = post(server, era, "search_notes", {"query": "health checks"})
        assert not answer["result"].get("isError"), answer
        late = [
            line.split("|")[-1].strip()
            for line in server.log_text()[started:].splitlines()
            if line.startswith("import time:")
        ]
    assert late == [], f"imported at the first call, not at start-up: {late}"
