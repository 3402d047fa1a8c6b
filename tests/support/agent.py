"""The research agent's settings as tests and benchmarks build them (research-agent/ must be on the
path: pytest's `pythonpath` has it, a script calls support.lessons.use_research_agent())."""


def make_settings(**overrides):
    """The defaults (only the bundled notes are searched), without the offline model's delay."""
    from app.config import Settings

    return Settings(**{"OFFLINE_TOKEN_DELAY_MS": 0, "LOG_LEVEL": "INFO", **overrides})
