"""What the runtime changes: the same hostile code under runc (the host's kernel, behind lesson 04's
seccomp profile) and under gVisor (SANDBOX_RUNTIME=runsc: gVisor's own kernel, in user space).

Sent to the lesson's API, in real containers (marker `container`: `make sandbox-test`); the runsc
cases are skipped, saying why, until `make gvisor` has registered the runtime. Each case asserts
what each runtime allows: under runc the profile refuses the call; under gVisor the call is
answered by gVisor, whose kernel is all that it reaches.
"""

import json
import platform
import textwrap

import pytest

from tests.support.sandbox_api import OPENED, run, runtime_settings

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def api_settings(runtime) -> dict[str, str]:
    return runtime_settings(runtime)


def printed(server, code: str) -> dict:
    """What a run that exited 0 printed last: one JSON document."""
    result = run(server, code)
    assert result["exit_code"] == 0, result
    return json.loads(result["stdout"].strip().splitlines()[-1])


def test_the_kernel_that_answers(server, runtime):
    out = printed(
        server,
        "import json, os; print(json.dumps([os.uname().release, open('/proc/version').read()]))",
    )
    release, version = out
    if runtime == "runc":  # the host's own kernel, the one every container on it shares
        assert release == platform.release() and platform.release() in version
    else:  # gVisor's: it says Linux 4.4.0 whatever the host runs
        assert release == "4.4.0" != platform.release()
        assert version.startswith("Linux version 4.4.0") and platform.release() not in version


# A new user and network namespace (the reported escape), unshare, io_uring and memfd: the
# kernel surface the seccomp profile closes under runc, and gVisor implements itself.
SURFACE = OPENED + textwrap.dedent("""
    import ctypes, errno, json, os, platform, socket
    libc = ctypes.CDLL(None, use_errno=True)
    arm = platform.machine() == "aarch64"
    NR_CLONE, NR_UNSHARE, NR_IO_URING_SETUP = (220, 97, 425) if arm else (56, 272, 425)
    NEWUSER, NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17

    def error():
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

    out = {}
    read, write = os.pipe()
    pid = libc.syscall(NR_CLONE, NEWUSER | NEWNET | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:  # the child: what did the new namespaces give it?
        status = open("/proc/self/status").read()
        child = {"CapEff": status.split("CapEff:")[1].split()[0],
                 "nf_tables": opened(lambda: socket.socket(16, socket.SOCK_RAW, 12)),
                 "interfaces": [name for _, name in socket.if_nameindex()]}
        os.write(write, json.dumps(child).encode())
        os._exit(0)
    out["clone newuser|newnet"] = "created" if pid > 0 else error()
    if pid > 0:
        os.waitpid(pid, 0)
        out["child"] = json.loads(os.read(read, 4096))
    out["unshare newuser"] = "ok" if libc.syscall(NR_UNSHARE, NEWUSER) == 0 else error()
    ring = libc.syscall(NR_IO_URING_SETUP, 1, ctypes.create_string_buffer(120))
    out["io_uring_setup"] = "ok" if ring >= 0 else error()
    out["memfd_create"] = opened(lambda: open(os.memfd_create("x"), "rb"))
    out["vsock"] = opened(lambda: socket.socket(40, socket.SOCK_STREAM))
    print(json.dumps(out))
""")

EXPECTED = {
    # The profile refuses each call: the host's kernel code behind it is never reached.
    "runc": {
        "clone newuser|newnet": "EPERM",
        "unshare newuser": "EPERM",
        "io_uring_setup": "EPERM",
        "memfd_create": "EPERM",
        "vsock": "EPERM",
    },
    # gVisor answers them itself (it does not apply the seccomp profile to the program: its own
    # kernel is the filter). The new namespaces are gVisor's: every capability inside them, and
    # no nf_tables, since gVisor has none; io_uring and memfd are gVisor's code, not the host's.
    "runsc": {
        "clone newuser|newnet": "created",
        "child": {
            "CapEff": "0000003fffffffff",
            "nf_tables": "EPROTONOSUPPORT",
            "interfaces": ["lo"],
        },
        "unshare newuser": "ok",
        "io_uring_setup": "ok",
        "memfd_create": "ok",
        "vsock": "EAFNOSUPPORT",
    },
}


def test_namespaces_io_uring_memfd_and_vsock(server, runtime):
    assert printed(server, SURFACE) == EXPECTED[runtime]
