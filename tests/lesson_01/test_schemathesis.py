"""Schemathesis against real production servers: their OpenAPI documents say what they send.

It generates requests from each schema (valid ones, and ones the schema forbids), sends them over
loopback and runs all its checks on the answers: status codes, content types, the error shape and
headers each response declares, 4xx for bad input, 2xx for good input, 405 with Allow for other
methods. A fixed seed and a bounded number of examples keep `make test` repeatable and quick.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = "30"
SEED = "20261122"


@pytest.mark.parametrize("script", ["lesson01/production_api.py"])  # step 2 declares every answer
def test_schemathesis_finds_no_gap_between_the_schema_and_the_answers(
    start_server, script, tmp_path
):
    server = start_server(script, OFFLINE_TOKEN_DELAY_MS="0", CACHE_MAX_ENTRIES="0")
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "NO_COLOR": "1"}
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server.url}/openapi.json",
            "--checks=all",
            f"--max-examples={MAX_EXAMPLES}",
            f"--seed={SEED}",
            "--workers=1",
            "--generation-database=none",
            "--request-timeout=30",
            "--no-color",
        ],
        cwd=tmp_path,  # it writes nothing here, but keep any report out of the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "5 selected / 5 total" in result.stdout  # every operation was tested
