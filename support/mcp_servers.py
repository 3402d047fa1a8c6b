"""Lesson 08's servers as processes, for its tests and `make bench-mcp`: a tool server (such as
code/08_notes_server.py) and the gateway (code/08_mcp_gateway.py) with the caller's catalog, each
on a free port, in the offline environment."""

import sys
from pathlib import Path

import yaml

from support.ports import free_port
from support.server import ServerProcess, offline_environment

REPO = Path(__file__).resolve().parents[1]
NOTES_SERVER = REPO / "code" / "08_notes_server.py"
GATEWAY = REPO / "code" / "08_mcp_gateway.py"


def tool_server(script: Path, log_dir: Path, **env) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [sys.executable, script],
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
        [sys.executable, GATEWAY],
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
