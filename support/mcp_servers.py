"""Lesson 08's servers as processes, for its tests and `make bench-mcp`: a tool server (such as
code/lesson08/notes_server.py) and the gateway (code/lesson08/mcp_gateway.py) with the caller's
catalog, each on a free port, in the offline environment, run by the Python of lesson 08's own
environment (.venv/lesson08: mcp 2.x and fastmcp 4.x, the image's lock), as their containers run
them."""

from pathlib import Path

import yaml

from support.lessons import module_name, run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment

REPO = Path(__file__).resolve().parents[1]
NOTES_SERVER = REPO / "code" / "lesson08" / "notes_server.py"
GATEWAY = REPO / "code" / "lesson08" / "mcp_gateway.py"
# `make test`, `make bench-mcp` and `make lesson-08 STEP=K` build it (the Makefile's LESSON08_VENV).
LESSON08_PYTHON = REPO / ".venv" / "lesson08" / "bin" / "python"


def command(script: Path, env: dict) -> list:
    """`python -m lesson08.NAME`; with lesson 09's tracing asked for (OTEL_EXPORTER_OTLP_ENDPOINT),
    the same module started through lesson08.tracing, which attaches the spans from outside it."""
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        return [LESSON08_PYTHON, "-m", "lesson08.tracing", module_name(script)]
    return [LESSON08_PYTHON, *run_module(script)]


def tool_server(script: Path, log_dir: Path, **env) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        command(script, env),
        env=offline_environment(PORT=port, **env),
        port=port,
        log_path=log_dir / f"{script.stem}-{port}.log",
        ready_timeout=60,
    )


def gateway(catalog: dict, work: Path, port: int | None = None, **env) -> ServerProcess:
    """The gateway on `port` (else a free one), with `catalog` (written to work/catalog.yaml)."""
    (work / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    port = port or free_port()
    return ServerProcess(
        command(GATEWAY, env),
        env=offline_environment(
            PORT=port,
            GATEWAY_CATALOG=work / "catalog.yaml",
            GATEWAY_PINS=work / "pins.json",
            **env,
        ),
        port=port,
        log_path=work / f"gateway-{port}.log",
        ready_timeout=60,
    )
