"""The agent's settings, read from environment variables (field name = variable name).

These are the settings lesson 02's core reads. The service adds those of its later layers (keys and
limits, the cache, the shutdown budget, the sandbox, MCP, tracing) in research_agent/settings.py,
whose `Settings` is the one class the running service reads.
"""

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

APP_DIR = Path(__file__).resolve().parent.parent  # research-agent/
BUNDLED_NOTES_DIR = APP_DIR / "notes"
REPO_DOCS_DIR = APP_DIR.parent / "docs"  # the course text: DOCS_DIR=../docs make research-agent

OFFLINE_MODEL_NAME = "offline-research-model"


class AgentSettings(BaseSettings):
    # VAR= (as in .env.example) means "use the default"
    model_config = SettingsConfigDict(env_ignore_empty=True)

    APP_VERSION: str = "1.0.0"

    # Model: without a key the deterministic offline model answers from search results.
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    OPENAI_MAX_RETRIES: int = 2
    MODEL_NAME: str = "gpt-4o-mini"
    TEMPERATURE: float = 0.2
    MAX_MODEL_CALLS: int = 5
    OFFLINE_TOKEN_DELAY_MS: int = 15
    REQUEST_TIMEOUT_SECONDS: float = 30.0

    # Search: "auto" means local when offline, duckduckgo when a real model is configured.
    SEARCH_BACKEND: Literal["auto", "local", "duckduckgo"] = "auto"
    SEARCH_MAX_RESULTS: int = 4
    SEARCH_TIMEOUT_SECONDS: float = 10.0
    DOCS_DIR: Path | None = None

    @property
    def offline(self) -> bool:
        return self.OPENAI_API_KEY is None or not self.OPENAI_API_KEY.get_secret_value()

    @property
    def model_label(self) -> str:
        return OFFLINE_MODEL_NAME if self.offline else self.MODEL_NAME

    @property
    def search_backend(self) -> str:
        if self.SEARCH_BACKEND != "auto":
            return self.SEARCH_BACKEND
        return "local" if self.offline else "duckduckgo"

    @property
    def docs_dirs(self) -> list[Path]:
        """Folders searched by the local backend: the bundled notes, and DOCS_DIR when it is set."""
        extra = [self.DOCS_DIR] if self.DOCS_DIR is not None else []
        dirs = [d.resolve() for d in (*extra, BUNDLED_NOTES_DIR) if d.is_dir()]
        return list(dict.fromkeys(dirs))  # DOCS_DIR=notes must not index the notes twice
