import pytest


@pytest.fixture(autouse=True)
def fresh_openai_http_clients():
    """langchain-openai keeps one HTTP client per process, bound to the loop that first used it.

    A server has one loop for its whole life; every TestClient starts a new one, so each test
    needs fresh clients.
    """
    from langchain_openai.chat_models import _client_utils

    _client_utils._cached_async_httpx_client.cache_clear()
    _client_utils._cached_sync_httpx_client.cache_clear()
