"""Lesson 08's catalog: which tool servers exist, how each runs, and which client may call what.

One YAML file (code/lesson08/catalog.yaml) read at start-up. A server is either `url:` (already
running: your own, or the processes of `make test`) or `image:` (the gateway starts its container
on first use, with the limits below, and stops it when idle).
"""

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt limit must not be silently ignored

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    url: str | None = None
    image: str | None = None
    port: int = 8000
    memory: str = "256m"
    cpus: float = 0.5
    pids: int = 64
    internet: bool = False  # egress beyond the gateway's own network
    # One more network, joined once started; "{owner}" is the gateway's owner (its project).
    network: str | None = None
    # Names of the gateway's environment variables this server may receive; nothing else is passed.
    secrets: list[str] = []
    env: dict[str, str] = {}  # plain settings, not secrets
    idle_seconds: float = 300.0
    # The tools this server provides: the gateway serves only these from it. A tool it declares
    # that is not here (another server's name, or one first declared after start-up) is withheld,
    # and no two servers may list the same name: a name is never resolved by catalog order.
    tools: list[str] = []
    # Flagged tool descriptions the operator has read and accepts (see lesson08.pinning).
    reviewed: list[str] = []


class ClientEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_env: str | None = None  # the gateway's variable holding this client's bearer token
    tools: list[str] = []  # tool names this client may list and call; ["*"]: all


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    servers: list[ServerEntry]
    # "anonymous" is the client that sends no token (or one the gateway does not know).
    clients: dict[str, ClientEntry] = {"anonymous": ClientEntry(tools=[])}

    @model_validator(mode="after")
    def one_server_per_tool(self) -> "Catalog":
        owners: dict[str, str] = {}
        for entry in self.servers:
            for tool in entry.tools:
                if tool in owners:
                    raise ValueError(
                        f"tool {tool!r} is listed under servers {owners[tool]!r} and "
                        f"{entry.name!r}: each tool name belongs to one server"
                    )
                owners[tool] = entry.name
        return self

    def server(self, name: str) -> ServerEntry:
        return next(s for s in self.servers if s.name == name)


def load_catalog(path: Path) -> Catalog:
    return Catalog.model_validate(yaml.safe_load(Path(path).read_text()))
