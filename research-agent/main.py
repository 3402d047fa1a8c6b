"""Entry point: `uvicorn main:app` or `python main.py` (from the research-agent/ folder)."""

import uvicorn
from app.api import create_app
from app.config import get_settings

app = create_app()

if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,  # keep our JSON logging
        timeout_graceful_shutdown=settings.GRACEFUL_SHUTDOWN_SECONDS,
    )
