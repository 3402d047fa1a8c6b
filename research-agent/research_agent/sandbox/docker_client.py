"""The Docker client of every part of the course that drives Docker from Python: the engine the
`docker` command talks to.

That is DOCKER_HOST when it is set (with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH), else the current
context: DOCKER_CONTEXT, else the one `docker context use` chose (`currentContext` in
$DOCKER_CONFIG/config.json, ~/.docker by default), else the default socket. Colima, rootless
Docker and Docker Desktop register their engine as a context, so a client that read DOCKER_HOST
alone found no engine there. The Docker SDK reads the context since 7.2 (`use_context`); asking for
it by name makes an older SDK fail here, at once, rather than quietly look at the default socket.
"""

import docker


def docker_client(**options) -> docker.DockerClient:
    """`docker.from_env(**options)`, the current context included (see above)."""
    return docker.from_env(use_context=True, **options)
