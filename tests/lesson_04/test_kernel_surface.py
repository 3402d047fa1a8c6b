"""What a run may ask the host's kernel for: new namespaces, host-wide syncs, netlink families.

Sent to the lesson's API as hostile code, in real containers (marker `container`: `make
sandbox-test`). Each case names what it found before the fix.
"""

import pytest

from tests.support.sandbox_api import printed, run, runtime_settings

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def api_settings(runtime) -> dict[str, str]:
    return runtime_settings(runtime)


# Every CLONE_NEW* flag, each with CLONE_NEWUSER as an unprivileged caller needs it: the user
# namespace gives it every capability inside, and with them the rest. CLONE_NEWTIME has clone's
# exit-signal bits, so only clone3 and unshare take it.
NAMESPACES = {
    "user": 0x10000000,
    "mount": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "time": 0x00000080,
}


def test_no_new_namespace_through_clone_clone3_or_unshare(server, runtime):
    # Before: `clone` sat in the profile's unconditional allow group, which voided the rule that
    # refuses CLONE_NEW*: clone(CLONE_NEWUSER|CLONE_NEWNET) ran, and its child had
    # CapEff 000001ffffffffff, uid 0 in its own user namespace and nf_tables to talk to.
    code = f"""
        import ctypes, errno, json, os, platform
        libc = ctypes.CDLL(None, use_errno=True)
        arm = platform.machine() == "aarch64"
        NR_CLONE, NR_UNSHARE, NR_CLONE3 = (220, 97, 435) if arm else (56, 272, 435)
        SIGCHLD, NEWUSER = 17, 0x10000000

        class CloneArgs(ctypes.Structure):  # clone3's first version: 64 bytes
            _fields_ = [(name, ctypes.c_uint64) for name in (
                "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
                "stack_size", "tls")]

        def child_or_error(pid):
            if pid == 0:  # the child of a clone that went through: it says so, and leaves
                caps = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
                os.write(2, f"child CapEff {{caps}}\\n".encode())
                os._exit(0)
            if pid > 0:
                os.waitpid(pid, 0)
                return "created"
            return errno.errorcode[ctypes.get_errno()]

        out = {{}}
        for name, flag in {NAMESPACES!r}.items():
            flags = flag | NEWUSER
            if name != "time":  # in clone, 0x80 is part of the exit signal
                pid = libc.syscall(NR_CLONE, flags | SIGCHLD, 0, 0, 0, 0)
                out["clone " + name] = child_or_error(pid)
            args = CloneArgs(flags=flags, exit_signal=SIGCHLD)
            out["clone3 " + name] = child_or_error(libc.syscall(NR_CLONE3, ctypes.byref(args), 64))
            ok = libc.syscall(NR_UNSHARE, flags) == 0
            out["unshare " + name] = "created" if ok else errno.errorcode[ctypes.get_errno()]
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    expected = {}
    for name in NAMESPACES:
        if name != "time":
            expected["clone " + name] = "EPERM"
        expected["clone3 " + name] = "ENOSYS"  # so the C library falls back to clone
        expected["unshare " + name] = "EPERM"
    if runtime != "runc":  # gVisor makes a user namespace of its own (test_runtimes.py)
        expected["clone user"] = expected["unshare user"] = "created"
    assert out == expected


def test_the_reported_clone_escape_prints_no_capabilities(server, runtime):
    # The report's own reproduction, as sent: before, it printed 000001ffffffffff.
    code = (
        "import ctypes,os\nl=ctypes.CDLL(None)\np=l.syscall(56,0x10000000|0x40000000|17,0,0,0,0)\n"
        "if p==0:\n    print(open('/proc/self/status').read().split('CapEff:')[1].split()[0]);"
        " os._exit(0)\nos.waitpid(p,0)"
    )
    result = run(server, code)
    if runtime != "runc":
        # gVisor: the child has every capability, in gVisor's user namespace and kernel, which
        # has no nf_tables to reach (test_runtimes.py asserts what it reaches).
        assert result["stdout"] == "0000003fffffffff\n", result
        return
    assert result["stdout"] == ""
    assert "ChildProcessError" in result["stderr"]  # clone failed, so there is no child to wait for


def test_processes_and_threads_are_still_created_the_ordinary_way(server):
    # clone without namespace flags (fork, threads, subprocess) must keep working, and clone3's
    # ENOSYS must send glibc back to clone, not fail.
    code = """
        import concurrent.futures, json, multiprocessing, os, subprocess, sys, threading
        out = {"cpu_count": os.cpu_count()}
        out["subprocess"] = subprocess.run(
            [sys.executable, "-c", "print('child')"], capture_output=True, text=True
        ).stdout
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        seen = []
        thread = threading.Thread(target=seen.append, args=("thread",))
        thread.start()
        thread.join()
        out["thread"] = seen
        with multiprocessing.Pool(2) as pool:
            out["pool"] = pool.map(abs, [-1, -2, -3])
        with concurrent.futures.ProcessPoolExecutor(2) as executor:
            out["executor"] = list(executor.map(abs, [-4]))
        # sysinfo stays allowed (docs/04, "What a container cannot contain"): glibc's own
        # memory figure comes from it, and is garbage when it fails.
        out["phys_mb"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    assert out.pop("cpu_count") >= 1
    assert 0 < out.pop("phys_mb") < 2**24  # a real amount of memory, under 16 TiB
    assert out == {
        "subprocess": "child\n",
        "fork": 7,
        "thread": ["thread"],
        "pool": [1, 2, 3],
        "executor": [4],
    }


def test_host_wide_sync_and_other_netlink_families_are_refused(server, runtime):
    # Before: sync and syncfs flushed every file system of the host (14,108 calls/s from one
    # run), and netlink SOCK_DIAG, AUDIT, NETFILTER and GENERIC sockets opened.
    code = """
        import ctypes, errno, json, os, platform, socket
        libc = ctypes.CDLL(None, use_errno=True)
        arm = platform.machine() == "aarch64"
        NR_SYNC, NR_SYNCFS = (81, 267) if arm else (162, 306)

        def call(number, *args):
            return "ok" if libc.syscall(number, *args) == 0 else errno.errorcode[ctypes.get_errno()]

        out = {"sync": call(NR_SYNC), "syncfs": call(NR_SYNCFS, os.open("/tmp", os.O_RDONLY))}
        os.sync()  # glibc's sync() returns nothing: a program calling it carries on
        with open("/tmp/f", "w") as f:  # one file's own flush stays allowed
            f.write("x")
            os.fsync(f.fileno())
            out["fsync"] = "ok"
        for name, protocol in [("route", 0), ("sock_diag", 4), ("audit", 9), ("netfilter", 12),
                               ("generic", 16)]:
            try:
                socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol).close()
                out[name] = "ok"
            except OSError as exc:
                out[name] = errno.errorcode[exc.errno]
        out["interfaces"] = [name for _, name in socket.if_nameindex()]  # netlink route
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    if runtime != "runc":
        # gVisor: sync is its own (its file system, not the host's); it has no such netlink
        # families at all.
        assert out == {
            "sync": "ok",
            "syncfs": "ok",
            "fsync": "ok",
            "route": "ok",
            "sock_diag": "EPROTONOSUPPORT",
            "audit": "EPROTONOSUPPORT",
            "netfilter": "EPROTONOSUPPORT",
            "generic": "EPROTONOSUPPORT",
            "interfaces": ["lo"],
        }, out
        return
    assert out == {
        "sync": "EPERM",
        "syncfs": "EPERM",
        "fsync": "ok",
        "route": "ok",
        "sock_diag": "EPERM",
        "audit": "EPERM",
        "netfilter": "EPERM",
        "generic": "EPERM",
        "interfaces": ["lo"],
    }
