"""A start imports what the configuration uses: the default (offline, local search, no sandbox)
loads neither the Docker SDK, nor the DuckDuckGo backend, nor the OpenAI client. Each check runs in
a fresh interpreter, since this test session has imported everything already."""

import json
import os
import subprocess
import sys

import pytest

from research_agent.settings import variables
from support.lessons import AGENT_DIR

OPTIONAL = ["docker", "ddgs", "langchain_community", "langchain_openai", "openai"]

# Start the app as `python main.py` does, up to a 200 from /ready (the lifespan builds the agent),
# then list which of the optional packages are loaded.
PROBE = f"""
import json, sys
from fastapi.testclient import TestClient
import main
with TestClient(main.app) as client:
    assert client.get("/ready").status_code == 200
print(json.dumps(sorted(name for name in {OPTIONAL!r} if name in sys.modules)))
"""


def loaded_at_start(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in variables()}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=AGENT_DIR,
        env={**clean, "LOG_LEVEL": "WARNING", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_the_default_start_loads_no_optional_backend():
    assert loaded_at_start() == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # No engine to reach (DOCKER_HOST points nowhere): the tool reports itself unavailable,
        # and the start never touches the machine's containers.
        ({"SANDBOX_ENABLED": "true", "DOCKER_HOST": "unix:///nonexistent.sock"}, {"docker"}),
        ({"OPENAI_API_KEY": "sk-not-used"}, {"langchain_openai", "openai", "langchain_community"}),
    ],
    ids=["sandbox", "online"],
)
def test_a_configured_backend_is_loaded_at_start(env, expected):
    """The probe sees a package when the configuration uses it: the test above can fail."""
    assert expected <= set(loaded_at_start(**env))
