"""Fixtures for the research agent's tests: settings, app clients and the agent as a process,
and the lesson's steps (code/lesson02/step*.py)."""

import sys
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from research_agent.app import create_app
from research_agent.settings import variables
from support.lessons import AGENT_DIR, ROOT, import_lesson, step_file
from tests.support.agent import make_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests start from the defaults, whatever the machine's environment holds."""
    for name in variables():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client_for():
    """client_for(**settings) -> a TestClient with the lifespan running (use it in a `with`)."""

    @contextmanager
    def open_client(agent=None, **overrides):
        app = create_app(make_settings(**overrides), agent=agent)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return open_client


@pytest.fixture
def client(client_for):
    with client_for() as c:
        yield c


@pytest.fixture
def start_agent(server_process):
    """start_agent(**settings) -> `python main.py`, as the images run it, ready on a free port."""

    def start(**settings):
        script = [sys.executable, "main.py"]
        return server_process(script, cwd=AGENT_DIR, ready_path="/ready", **settings)

    return start


@pytest.fixture
def load_step(monkeypatch):
    """load_step(k, **env) -> lesson 02's step k as a fresh module, its settings read from `env`
    (no token delay unless given). Steps 4 and 5 load step 3's agent as they are loaded, a fresh
    module too, so it reads the same environment."""

    def load(k: int, **env):
        monkeypatch.delenv("QUESTION", raising=False)  # steps 1 to 3 ask it when run
        for name, value in {"OFFLINE_TOKEN_DELAY_MS": 0, **env}.items():
            monkeypatch.setenv(name, str(value))
        return import_lesson(step_file("02", k).relative_to(ROOT).as_posix())

    return load
