"""The tests that build an image or read a Compose file pass where Docker's CLI has no plugins, as
on a learner's fresh machine (an Engine without buildx or Compose v2): each must check for the
plugin it needs (tests/support/docker_cli.py: `buildx()`, `compose_v2()`) and build without it or
skip saying why. CI's machine has the plugins, so this runs those tests once with them hidden, as
a normal user (scripts/as-learner.sh): in `make compose-test`, the check about both Composes, so
that `make test` does not run half its Docker tests twice."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# How a test file runs `docker build`, `docker buildx` or `docker compose`: as an argument list, a
# call of tests/support/docker_cli.py's `docker(...)`, a command line, or by asking for Compose v2.
TOUCHES_PLUGINS = re.compile(
    r"""["']docker["'],\s*["'](build|buildx|compose)["']|docker\(["'](build|buildx|compose)["']"""
    r"""|["']docker (build|buildx|compose)\b|compose_v2\(\)"""
)


def plugin_tests() -> list[str]:
    """The test files of `make test` (not the container checks, which install the plugins first)
    that run a command a plugin may serve."""
    found = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        source = path.read_text()
        if path.name == Path(__file__).name or "pytestmark = pytest.mark.container" in source:
            continue
        if TOUCHES_PLUGINS.search(source):
            found.append(str(path.relative_to(ROOT)))
    return found


def test_the_plugin_tests_are_found():
    """The search above finds the tests it is for (if it found none, the check below proves
    nothing)."""
    found = plugin_tests()
    assert "tests/repo/test_sbom.py" in found
    assert "tests/lesson_03/test_compose.py" in found
    assert "tests/lesson_07/test_compose_file.py" in found


@pytest.mark.container
def test_the_tests_that_touch_docker_plugins_pass_with_the_plugins_hidden():
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("runuser") is None:
        pytest.skip(
            "needs root (unshare, mount, runuser) to hide the CLI plugins in a mount namespace: "
            "run `sudo .venv/bin/python -m pytest tests/repo/test_cli_plugins.py`"
        )
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("no Docker engine answers `docker info`: run it where Docker runs")
    done = subprocess.run(
        [str(ROOT / "scripts/as-learner.sh"), str(ROOT), f"{ROOT}/.venv/bin/python", "-m", "pytest",
         "-p", "no:cacheprovider", "-q", "--no-header", "-rs", *plugin_tests()],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-40:]
    assert done.returncode == 0, "\n".join(summary) + done.stderr[-2000:]
    # The hidden plugins were hidden: the Compose v2 tests said why they skipped.
    assert "no Compose v2 here" in done.stdout, "\n".join(summary)
