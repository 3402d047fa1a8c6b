"""Sandbox code both egress suites (tests/lesson_04/test_egress_proxy.py, test_egress_runner.py)
run: a search for the upstream credential everywhere a run can read (they plant decoys shaped like
the token, so a search that finds the decoys would find the token), and a run of fetches that takes
a run over its byte cap."""

# `search_for_tokens(proc_files)`: every string shaped like the token (upstream-<32 hex>) in the
# environment, in every file below / (but /proc, /sys and /dev) and in each process's /proc files
# named in `proc_files`; returns (sorted [token, place] pairs, how many files it read). A place is
# "environ", "/proc" (any process's file) or the file's path.
SEARCH_FOR_TOKENS = r"""
import os, re

def search_for_tokens(proc_files):
    token = re.compile(rb"upstream" rb"-[0-9a-f]{32}")
    found, places = set(), 0

    def search(path):
        nonlocal places
        try:
            with open(path, "rb") as f:
                data = f.read(8_000_000)
        except OSError:
            return
        places += 1
        for match in token.findall(data):
            found.add((match.decode(), path if not path.startswith("/proc/") else "/proc"))

    for value in os.environ.values():
        found.update((match.decode(), "environ") for match in token.findall(value.encode()))
    for root, dirs, files in os.walk("/"):
        if root in ("/proc", "/sys", "/dev"):
            dirs[:] = []
            continue
        for name in files:
            search(os.path.join(root, name))
    for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self"]:
        for name in proc_files:
            search(f"/proc/{pid}/{name}")
    return sorted(found), places

"""


def fetches_one_by_one(url: str) -> str:
    """Sandbox code that fetches `url` six times, one after another, and reports each answer's
    status (`statuses`) and the last answer (`last`)."""
    return f"""
import time
statuses = []
for _ in range(6):
    statuses.append(fetch({url!r}))
    time.sleep(0.5)  # the proxy adds a request up once it has finished
report(statuses=[s.get("status") for s in statuses], last=statuses[-1])
"""
