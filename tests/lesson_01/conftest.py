import sys

import pytest

from support.lessons import ROOT, import_lesson, run_module


@pytest.fixture
def load_script(monkeypatch):
    """Import a lesson script as a fresh module, after setting the environment it reads."""

    def load(filename: str, **env: str):
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return import_lesson(f"code/{filename}")

    return load


@pytest.fixture
def start_server(server_process):
    """A lesson script run as `make lesson-01...` runs it: its own uvicorn process, on loopback."""

    def start(script: str, **env: str):
        return server_process(
            [sys.executable, *run_module(f"code/{script}")], cwd=ROOT, ready_path="/ready", **env
        )

    return start
