"""Lesson 08, going further: what the gateway may ask of Docker, and nothing else.

Access to the Docker socket is root on the host: whoever holds it can start a privileged container
with / mounted. The gateway needs only to start its catalog's images, look at them and remove
them, so in Compose it talks to this guard instead (DOCKER_HOST=tcp://docker-guard:2375), and only
the guard mounts the socket. The guard forwards:

- GET /_ping, /version (the Docker SDK asks on connect);
- POST /containers/create for an image of the catalog, named and labelled for this owner, with
  every limit the launcher sets (read-only, no capabilities, nobody, memory, pids, CPU, the tools
  network, no mounts, no privileges, no host namespaces);
- inspect, start, stop, kill, wait, delete, and list, of containers carrying this owner's label.

Everything else is a 403. Run: python code/lesson08_docker_guard.py (GUARD_*, below).
"""

import json
import re

import httpx
import uvicorn
from pydantic_settings import BaseSettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

OWNER_LABEL = "lesson08.owner"


class Settings(BaseSettings):
    GUARD_HOST: str = "0.0.0.0"
    GUARD_PORT: int = 2375
    GUARD_DOCKER_SOCKET: str = "/var/run/docker.sock"
    GUARD_OWNER: str = "lesson08"
    GUARD_IMAGES: str = "lesson08-notes"  # comma-separated: the catalog's images
    GUARD_NETWORK: str = "lesson08_tools"
    GUARD_MAX_MEMORY: int = 512 * 1024 * 1024
    GUARD_MAX_PIDS: int = 256
    GUARD_MAX_NANO_CPUS: int = 1_000_000_000


def create_problems(body: dict, name: str, s: Settings) -> list[str]:
    """Why a create request is refused; [] when it asks only for what the launcher sets."""
    host = body.get("HostConfig") or {}
    labels = body.get("Labels") or {}
    images = {i.strip() for i in s.GUARD_IMAGES.split(",") if i.strip()}
    checks = {
        "image not in the catalog": body.get("Image") in images,
        "name must start with the owner": name.startswith(f"{s.GUARD_OWNER}-"),
        "owner label missing": labels.get(OWNER_LABEL) == s.GUARD_OWNER,
        "must run as nobody": body.get("User") == "65534:65534",
        "root must be read-only": host.get("ReadonlyRootfs") is True,
        "capabilities must all be dropped": host.get("CapDrop") == ["ALL"]
        and not host.get("CapAdd"),
        "no-new-privileges required": "no-new-privileges" in (host.get("SecurityOpt") or []),
        "privileged refused": not host.get("Privileged"),
        "mounts refused": not (host.get("Binds") or host.get("Mounts") or host.get("VolumesFrom")),
        "devices refused": not host.get("Devices"),
        "memory limit required": 0 < (host.get("Memory") or 0) <= s.GUARD_MAX_MEMORY,
        "pids limit required": 0 < (host.get("PidsLimit") or 0) <= s.GUARD_MAX_PIDS,
        "cpu limit required": 0 < (host.get("NanoCpus") or 0) <= s.GUARD_MAX_NANO_CPUS,
        "only the tools network": host.get("NetworkMode") == s.GUARD_NETWORK,
        "no host namespaces": all(
            host.get(k) in (None, "", "private")
            for k in ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")
        ),
    }
    return [problem for problem, ok in checks.items() if not ok]


def build_app(settings: Settings) -> Starlette:
    docker = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=settings.GUARD_DOCKER_SOCKET),
        base_url="http://docker",
        timeout=60,
    )

    def refuse(why: str) -> JSONResponse:
        return JSONResponse({"message": f"refused by the lesson 08 Docker guard: {why}"}, 403)

    async def forward(request: Request, path: str, body: bytes) -> Response:
        upstream = await docker.request(
            request.method,
            path,
            params=request.query_params,
            content=body,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        return Response(
            upstream.content,
            upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    async def owner_of(container: str) -> tuple[int, str | None]:
        answer = await docker.get(f"/containers/{container}/json")
        if answer.status_code != 200:
            return answer.status_code, None
        labels = answer.json().get("Config", {}).get("Labels") or {}
        return 200, labels.get(OWNER_LABEL)

    async def handle(request: Request) -> Response:
        path = re.sub(r"^/v[0-9.]+", "", request.url.path)
        method, body = request.method, await request.body()
        if method in ("GET", "HEAD") and path in ("/_ping", "/version"):
            return await forward(request, request.url.path, body)
        if method == "GET" and path == "/containers/json":
            filters = json.loads(request.query_params.get("filters") or "{}")
            wanted = f"{OWNER_LABEL}={settings.GUARD_OWNER}"
            if wanted not in (filters.get("label") or []):
                return refuse(f"list only with the filter label={wanted}")
            return await forward(request, request.url.path, body)
        if method == "POST" and path == "/containers/create":
            problems = create_problems(
                json.loads(body or b"{}"), request.query_params.get("name", ""), settings
            )
            if problems:
                return refuse("; ".join(problems))
            return await forward(request, request.url.path, body)
        one = re.fullmatch(r"/containers/([A-Za-z0-9_.-]+)(/(json|start|stop|kill|wait))?", path)
        if one and (method, one.group(3)) in {
            ("GET", "json"),
            ("POST", "start"),
            ("POST", "stop"),
            ("POST", "kill"),
            ("POST", "wait"),
            ("DELETE", None),
        }:
            status, owner = await owner_of(one.group(1))
            if status == 404:  # no such container: say so, as Docker would
                return JSONResponse({"message": "No such container"}, 404)
            if owner != settings.GUARD_OWNER:
                return refuse("not a container of this owner")
            return await forward(request, request.url.path, body)
        return refuse(f"{method} {path} is not something the gateway needs")

    return Starlette(
        routes=[Route("/{path:path}", handle, methods=["GET", "HEAD", "POST", "DELETE", "PUT"])]
    )


if __name__ == "__main__":
    settings = Settings()
    uvicorn.run(
        build_app(settings), host=settings.GUARD_HOST, port=settings.GUARD_PORT, log_level="warning"
    )
