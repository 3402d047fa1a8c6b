"""Lesson 01, the production version: CORS from settings.

A browser app on another origin may call the API only if the API says so. No origins, no CORS
headers: only same-origin pages and non-browser clients can call.
"""

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware


def allow_origins(app: FastAPI, origins: list[str]) -> None:
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        # Browsers refuse credentials with a wildcard origin, so never allow both.
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
    )
