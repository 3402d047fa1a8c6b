import importlib.util
import itertools
from pathlib import Path

import pytest

CODE = Path(__file__).resolve().parents[2] / "code"
_fresh = itertools.count()


@pytest.fixture
def load_script(monkeypatch):
    """Import a lesson script as a fresh module, after setting the environment it reads at import."""

    def load(filename: str, **env: str):
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location(f"lesson_{next(_fresh)}", CODE / filename)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
