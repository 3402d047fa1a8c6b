"""The research agent's settings as tests and benchmarks build them."""


def make_settings(**overrides):
    """The defaults (only the bundled notes are searched), without the offline model's delay."""
    from research_agent.settings import Settings

    return Settings(**{"OFFLINE_TOKEN_DELAY_MS": 0, "LOG_LEVEL": "INFO", **overrides})
