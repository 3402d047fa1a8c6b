"""Entry point: `python main.py` (from the research-agent/ folder), as the images run it."""

import logging
import os
import sys

import uvicorn

from research_agent.access.forwarded import uvicorn_forwarding
from research_agent.app import create_app
from research_agent.settings import get_settings
from research_agent.tracing.otel import flush_tracing

app = create_app()

if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run(
        app,
        host=settings.server.HOST,
        port=settings.server.PORT,
        log_config=None,  # keep our JSON logging
        **uvicorn_forwarding(
            settings.access.FORWARDED_ALLOW_IPS
        ),  # only a configured proxy names callers
        # uvicorn's grace; the app ends what is still open just before it
        # (research_agent/web/shutdown.py).
        timeout_graceful_shutdown=settings.shutdown.GRACEFUL_SHUTDOWN_SECONDS,
    )
    # Reached after a shutdown when this is PID 1 in a container: the kernel ignores the SIGTERM
    # uvicorn re-raises to exit. Every request is finished and logged, yet tearing down the
    # interpreter (all of LangChain, numpy...) took up to 2 s on a busy machine, past the 10 s of
    # `docker stop`. Flush the logs and the spans still batched, and leave now.
    flush_tracing()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
