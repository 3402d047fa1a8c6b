"""tests/support/: what every lesson's tests and the benchmarks rely on, checked on its own."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from support import ports, zygote
from support.lessons import ROOT
from support.ports import candidate_ports, ephemeral_range, free_port
from support.server import ServerProcess
from support.waiting import wait_for
from tests.support.sse import Event, iter_sse, json_events, parse_sse


def test_parse_sse_reads_names_ids_multi_line_data_and_skips_comments():
    body = (
        ": keep-alive\r\n\r\n"
        'event: token\r\ndata: {"text": "a"}\r\n\r\n'
        "id: 7\nevent: note\ndata: line one\ndata: line two\n\n"
        "data: [DONE]\n\n"
    )
    assert parse_sse(body) == [
        Event("token", '{"text": "a"}'),
        Event("note", "line one\nline two", "7"),
        Event("message", "[DONE]"),
    ]
    assert json_events(parse_sse(body), "token") == [{"text": "a"}]


def test_iter_sse_yields_each_event_when_its_blank_line_arrives():
    read = []

    def stream():
        for line in ["data: 1", "", "data: 2"]:
            read.append(line)
            yield line

    # The first event comes before the third line is read; the last one at the end of the stream.
    assert [(event.data, len(read)) for event in iter_sse(stream())] == [("1", 2), ("2", 3)]


def test_wait_for_returns_the_value_or_says_what_it_waited_for():
    calls = iter([0, "", "ready"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0) == "ready"
    with pytest.raises(TimeoutError, match="the moon not true after 0.2 s"):
        wait_for(lambda: False, timeout=0.2, interval=0.05, what="the moon")


def test_free_ports_are_outside_the_range_outgoing_connections_take_theirs_from():
    """A port from the ephemeral range can become a connection's source port before the server
    binds it (a test's postgres once failed so)."""
    low, high = ephemeral_range()
    ports = {free_port() for _ in range(50)}
    assert all(port not in range(low, high + 1) and port in candidate_ports() for port in ports)
    assert len(ports) > 40  # chosen at random: two processes seldom pick the same one
    for port in ports:
        with socket.create_server(("127.0.0.1", port)):  # each one can be bound
            pass


def test_a_port_handed_out_is_not_handed_to_another_process_until_this_one_exits(
    monkeypatch, tmp_path
):
    """free_port checks a port, then releases it: without a reservation, another test worker
    could be handed the same port before our server binds it ("address already in use")."""
    # Forty ports and a directory of reservations of this test's own (a second run of this test
    # beside it, in another checkout, shares neither).
    monkeypatch.setattr(ports, "candidate_ports", lambda: range(10_000, 10_040))
    monkeypatch.setattr(ports, "RESERVATIONS", tmp_path)
    ours = [free_port() for _ in range(20)]
    assert len(set(ours)) == 20  # nor twice to this one
    # Another process, the same 40 ports to choose from: it gets none of ours.
    script = (
        "import json, sys, pathlib, support.ports as p\n"
        "p.candidate_ports = lambda: range(10_000, 10_040)\n"
        "p.RESERVATIONS = pathlib.Path(sys.argv[1])\n"
        "got = []\n"
        "for _ in range(20):\n"
        "    try: got.append(p.free_port(attempts=400))\n"
        "    except RuntimeError: break\n"
        "print(json.dumps(got))\n"
    )
    run = [sys.executable, "-c", script, str(tmp_path)]
    theirs = json.loads(subprocess.run(run, cwd=ROOT, capture_output=True, check=True).stdout)
    assert theirs and not set(theirs) & set(ours), (sorted(ours), theirs)
    # The other process has exited: its ports are free to hand out again, ours are still held.
    assert all(not (tmp_path / str(port)).exists() for port in theirs)
    assert all((tmp_path / str(port)).read_text() == str(os.getpid()) for port in ours)


def test_a_server_that_exits_before_it_is_ready_fails_with_its_log(tmp_path):
    script = "import sys; print('bad setting: PORT'); sys.exit(3)"
    server = ServerProcess(
        [sys.executable, "-c", script], port=free_port(), log_path=tmp_path / "log"
    )
    with pytest.raises(RuntimeError, match="exited with 3:\nbad setting: PORT"):
        server.start()


def test_stop_sends_sigterm_then_sigkill_after_the_grace(tmp_path):
    # Ignores SIGTERM, serves /health: only the SIGKILL after the grace ends it.
    script = (
        "import http.server, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *args):\n"
        "        print('term ignored', flush=True)\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    port = free_port()
    with ServerProcess([sys.executable, "-c", script, str(port)], port=port) as server:
        assert "term ignored" in wait_for(server.log_text, timeout=10, what="a logged request")
        assert server.stop(grace=0.5) == -9


BUSY_THEN_SERVE = """
import http.server, sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:  # busy, as a server importing LangChain on a loaded machine is
    pass


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()


http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ready).serve_forever()
"""


def test_a_server_still_busy_starting_gets_more_than_its_ready_timeout():
    port = free_port()
    # Busy for 1.5 times its timeout. The CPU it gains in the last window (2 s) decides; a window
    # of 1 s gained under 0.05 s of CPU on a machine at load 27 with two cores, and failed.
    args = [sys.executable, "-c", BUSY_THEN_SERVE, str(port), "6"]
    with ServerProcess(args, port=port, ready_timeout=4) as server:
        assert server.process.poll() is None


def test_a_server_that_idles_without_answering_fails_at_its_ready_timeout():
    port = free_port()
    idle = ServerProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"], port=port, ready_timeout=2
    )
    with pytest.raises(TimeoutError, match="not 200 after"):
        idle.start()


# A docker CLI for the test below: `docker compose version --short` and `docker compose -f ...`
# answered as Docker 28 without the plugin, as Docker 20.10 without it, or as Compose v2.
DOCKERS = {
    "docker 28, no plugin": 'echo "docker: unknown command: docker $1" >&2\n'
    "echo \"unknown shorthand flag: 'f' in -f\" >&2; exit 1\n",
    "docker 20.10, no plugin": "echo \"docker: '$1' is not a docker command.\" >&2; exit 1\n",
    "compose v2": 'if [ "$2" = version ]; then echo 2.26.1-4; fi\n',
}


@pytest.mark.parametrize(("docker", "expected"), zip(DOCKERS, [False, False, True], strict=True))
def test_compose_v2_is_asked_of_docker_compose_version_not_read_from_an_error(
    docker, expected, tmp_path, monkeypatch
):
    from tests.support.docker_cli import compose_v2

    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n" + DOCKERS[docker])
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert compose_v2.__wrapped__() is expected


# What a program sees and how it ends: printed to its log, compared between `python script.py`
# (subprocess) and the same script forked ready-imported (support.zygote, what ServerProcess uses).
PROGRAM = """
import atexit, json, os, signal, sys, threading, time
how = sys.argv[1]
def down(depth):
    try:
        return down(depth + 1)
    except RecursionError:
        return depth
print(json.dumps({"recursion": down(0), "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                  "env": os.environ.get("ZYGOTE_PROBE"), "name": __name__,
                  "repo_on_path": os.environ["REPO"] in sys.path,
                  "stdin": sys.stdin.read()}))
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread joined", flush=True))).start()
if how == "exit":
    sys.exit(3)
if how == "raise":
    raise ValueError("boom")
if how == "wait":
    print("waiting", flush=True)
    time.sleep(30)
if how == "ctrl-c":
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
"""


def ran(tmp_path, forked: bool, how: str, sig: int | None = None) -> tuple[int, int, list[str]]:
    (tmp_path / "prog").mkdir(exist_ok=True)
    script = tmp_path / "prog" / "program.py"
    script.write_text(PROGRAM)
    log = tmp_path / f"{forked}-{how}.log"
    args = [sys.executable, "prog/program.py", how]
    env = {
        "PATH": "/usr/bin:/bin",
        "ZYGOTE_PROBE": "seen",
        "PYTHONUNBUFFERED": "1",
        "REPO": str(ROOT),
    }
    if forked:
        assert zygote.forkable(args)
        process = zygote.Forked(args, tmp_path, env, log)
    else:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                args, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
    if sig is not None:
        wait_for(lambda: "waiting" in log.read_text(), timeout=60, what="the program waiting")
        process.send_signal(sig)
    code = process.wait(60)
    lines = log.read_text().splitlines()
    seen = json.loads(lines[0])
    recursion = seen.pop("recursion")  # how deep its code can call: compared, not fixed
    assert seen == {
        "argv": ["prog/program.py", how],
        "cwd": str(tmp_path),
        "path0": str(tmp_path / "prog"),
        "env": "seen",
        "name": "__main__",
        "repo_on_path": False,
        "stdin": "",
    }, seen
    return code, recursion, [line for line in lines[1:] if not line.startswith("  ")]


@pytest.mark.parametrize(
    "how, sig",
    [("end", None), ("exit", None), ("raise", None), ("wait", signal.SIGTERM), ("ctrl-c", None)],
    ids=["end", "sys.exit(3)", "an exception", "SIGTERM", "an uncaught Ctrl+C"],
)
def test_a_forked_server_sees_and_ends_as_python_script_py_does(tmp_path, how, sig):
    alike = ran(tmp_path, forked=False, how=how, sig=sig)
    assert ran(tmp_path, forked=True, how=how, sig=sig) == alike
    expected_code = {"end": 0, "exit": 3, "raise": 1, "wait": -15, "ctrl-c": -2}[how]
    assert alike[0] == expected_code, alike
