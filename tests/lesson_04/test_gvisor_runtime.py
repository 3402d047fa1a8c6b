"""gVisor as a sandbox runtime: once `make gvisor` has registered it, a sandbox with lesson 04's
limits runs on gVisor's application kernel, with no network (runsc) or on a Docker network
(runsc-net). Real containers (marker `container`: `make sandbox-test`); skipped, saying why, on a
daemon without the runtime.
"""

import json

import pytest

from support.egress import SANDBOX_IMAGE
from tests.support.docker_cli import docker

pytestmark = pytest.mark.container

KERNEL = "import json, os; print(json.dumps([open('/proc/version').read(), os.uname().release]))"


def registered() -> set[str]:
    return set(json.loads(docker("info", "--format", "{{json .Runtimes}}")))


def kernel(runtime: str, network: str) -> tuple[str, str]:
    out = docker(
        "run", "--rm", f"--runtime={runtime}", f"--network={network}",
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "65534:65534", "--tmpfs", "/tmp:rw,noexec,nosuid,size=16m",
        "--pids-limit", "64", "--memory", "256m",
        SANDBOX_IMAGE, "python", "-c", KERNEL,
    )  # fmt: skip
    version, release = json.loads(out)
    return version, release


@pytest.mark.parametrize(("runtime", "network"), [("runsc", "none"), ("runsc-net", "bridge")])
def test_gvisor_runs_the_sandbox_on_its_own_kernel(runtime, network):
    if runtime not in registered():
        pytest.skip(f"the Docker daemon has no {runtime} runtime: `make gvisor` registers it")
    host_version, host_release = kernel("runc", network)
    version, release = kernel(runtime, network)
    # runc: the host's kernel answers. gVisor: its own, which says it is Linux 4.4.0.
    assert version != host_version, version
    assert release == "4.4.0" and release != host_release, (release, host_release)
    assert version.startswith("Linux version 4.4.0"), version
