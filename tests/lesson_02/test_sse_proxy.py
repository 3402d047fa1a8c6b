"""SSE through a real proxy: what `X-Accel-Buffering: no` changes, measured instead of asserted.

Debian's nginx runs on loopback with bench/nginx-sse-proxy.conf: a common "gzip everything"
block, one location that honours the agent's header and one that ignores it. The same stream is read
through each. The assertion is about order, not speed: when the client reads its first token, is
the stream still being sent by the agent (its research_streams_open gauge)? `make bench-sse-proxy`
prints the times.
"""

import pytest

from bench import sse_proxy as bench
from support.commands import find_command


@pytest.fixture(scope="module")
def agent_and_proxy():
    if find_command("nginx") is None:
        pytest.fail("nginx is not installed: `make test` says how to install it")
    # About 150 words, 20 ms apart: a 3-second stream.
    with bench.research_agent(token_delay_ms=20) as agent, bench.nginx(agent) as proxy:
        yield agent, proxy


def test_direct_tokens_arrive_while_the_stream_is_still_open(agent_and_proxy):
    agent, _ = agent_and_proxy
    timing = bench.time_stream(agent, agent)
    assert timing.tokens > 50 and timing.streams_open_at_first_token == 1


def test_behind_gzip_nginx_the_header_lets_tokens_through_as_they_are_written(agent_and_proxy):
    agent, proxy = agent_and_proxy
    timing = bench.time_stream(proxy, agent)
    assert timing.content_encoding == "gzip"  # compressed, and still streaming
    assert timing.tokens > 50 and timing.streams_open_at_first_token == 1


def test_without_the_header_gzip_nginx_holds_the_stream_until_it_ends(agent_and_proxy):
    agent, proxy = agent_and_proxy
    timing = bench.time_stream(f"{proxy}/without-header", agent)
    assert timing.content_encoding == "gzip"
    # The first token reached the client only after the agent had sent the last event.
    assert timing.tokens > 50 and timing.streams_open_at_first_token == 0
