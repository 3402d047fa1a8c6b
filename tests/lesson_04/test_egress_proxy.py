"""Egress by allow-list, attacked from inside a sandbox: the sandbox's only way out is the egress
proxy (docker/egress-proxy), and the proxy lets through only what its policy allows.

Real containers (marker `container`: `make sandbox-test`), offline: the "internet" is a container
of our own on its own network (support/egress.py draws the lab). Each sandbox runs with
lesson 04's limits, under runc and, where `make gvisor` registered it, gVisor (runsc-net); the
code in it is a stdlib client like any run's code, or a raw socket where an attacker would use one.
"""

import contextlib
import ipaddress
import json
import secrets
import socket
import textwrap
import threading
import uuid

import pytest

from support import egress
from support.egress import ALLOWED, API, INWARD, OTHER_ALLOWED, REFUSED
from support.ports import free_port
from support.waiting import wait_for
from tests.support.egress_probes import SEARCH_FOR_TOKENS, fetches_one_by_one

pytestmark = pytest.mark.container

MAX_BYTES = 400_000
MAX_REQUESTS = 30


@pytest.fixture(scope="module")
def lab():
    egress.build_images()
    lab = egress.EgressLab(max_bytes=MAX_BYTES, max_requests=MAX_REQUESTS)
    yield lab
    lab.close()


@pytest.fixture(params=["runc", "runsc-net"])
def runtime(request) -> str:
    if request.param not in egress.runtimes():
        pytest.skip(f"the Docker daemon has no {request.param} runtime (make gvisor registers it)")
    return request.param


def lines(lab, run: str, **match: str) -> list[dict]:
    return [
        line
        for line in lab.proxy_log(run)
        if all(line.get(key) == value for key, value in match.items())
    ]


def test_allowed_hosts_over_http_and_https_are_reached_and_logged(lab, runtime):
    run = egress.new_run()
    result = lab.sandbox(
        f"""
        report(http=fetch("http://{ALLOWED}/"),
               https=fetch("https://{ALLOWED}/"),
               pattern=fetch("https://{OTHER_ALLOWED}/"),
               # spliced, not re-signed: the sandbox sees the server's own certificate
               tls=connect("{ALLOWED}:443", sni="{ALLOWED}", verify=True))
        """,
        run=run,
        runtime=runtime,
    )
    assert result["http"] == {
        "status": 200,
        "body": f"hello from {ALLOWED} over http\n",
        "length": len(f"hello from {ALLOWED} over http\n"),
    }
    assert result["https"]["body"] == f"hello from {ALLOWED} over https\n"
    assert result["pattern"]["body"] == f"hello from {OTHER_ALLOWED} over https\n"
    assert result["tls"]["issuer"] == "fake internet test CA", result["tls"]

    http = lines(lab, run, decision="allowed", method="GET", host=ALLOWED)
    assert len(http) == 1 and http[0]["status"] == "200"
    assert int(http[0]["received"]) > len("hello from") and int(http[0]["sent"]) > 0
    tunnels = lines(lab, run, decision="allowed", method="CONNECT", tls="splice")
    assert {line["host"] for line in tunnels} == {ALLOWED, OTHER_ALLOWED}
    assert all(line["sni"] == line["host"] and int(line["received"]) > 0 for line in tunnels)
    seen = {(entry["scheme"], entry["host"]) for entry in lab.upstream_log()}
    assert {("http", ALLOWED), ("https", ALLOWED), ("https", OTHER_ALLOWED)} <= seen


def test_a_host_off_the_list_gets_a_403_that_says_why(lab, runtime):
    run = egress.new_run()
    result = lab.sandbox(
        f"""
        report(http=fetch("http://{REFUSED}/"),
               https=fetch("https://{REFUSED}/"),
               connect=connect("{REFUSED}:443", sni="{REFUSED}"),
               # *.allowed.test is one or more labels before the suffix, not the suffix
               # itself, nor a name that merely ends with it
               suffix=fetch("http://allowed.test/"),
               lookalike=fetch("http://evilallowed.test/"))
        """,
        run=run,
        runtime=runtime,
    )
    assert result["http"]["status"] == 403
    assert f"GET http://{REFUSED}/" in result["http"]["body"]
    assert "Reason: host-not-on-allow-list" in result["http"]["body"]
    # A refused CONNECT: the proxy answers inside TLS under its own CA (trusted by the sandbox).
    assert result["https"]["status"] == 403, result["https"]
    assert f"CONNECT https://{REFUSED}/" in result["https"]["body"]
    assert "Reason: host-not-on-allow-list" in result["https"]["body"]
    assert " 403 Forbidden" in result["connect"]["reply"], result["connect"]
    assert "Reason: host-not-on-allow-list" in result["connect"]["reply"]
    for name in ("suffix", "lookalike"):
        assert "Reason: host-not-on-allow-list" in result[name]["body"], result[name]

    refused = lines(lab, run, decision="refused", reason="host-not-on-allow-list")
    assert {(line["method"], line["host"]) for line in refused} == {
        ("GET", REFUSED),
        ("CONNECT", REFUSED),  # twice: urllib's and the raw one
        ("GET", "allowed.test"),
        ("GET", "evilallowed.test"),
    }
    assert not [entry for entry in lab.upstream_log() if entry["host"] == REFUSED]


def test_only_http_to_80_and_https_through_connect_to_443_pass(lab, runtime):
    """A request that is not a CONNECT names its scheme and port, and Squid would speak that
    scheme itself to any port of an allowed name: TLS to 8443, FTP to 2121, WHOIS to 43, with the
    credential header for a credential host. Each is a 403 that says why, and nothing is
    connected (before, each was a 502: the proxy had tried)."""
    run = egress.new_run()
    result = lab.sandbox(
        f"""
        report(https_port=proxy_request("https://{ALLOWED}:8443/"),
               https=proxy_request("https://{ALLOWED}/"),
               credential_port=proxy_request("https://{API}:8443/"),
               ftp=proxy_request("ftp://{ALLOWED}:2121/"),
               ftp_80=proxy_request("ftp://{ALLOWED}:80/"),
               whois=proxy_request("whois://{ALLOWED}/"),
               # inside a tunnel the proxy decrypts, an absolute URL names its own port and scheme
               inside_port=connect("{API}:443", sni="{API}", path="https://{API}:8443/"),
               inside_ftp=connect("{API}:443", sni="{API}", path="ftp://{API}:443/"),
               inside=connect("{API}:443", sni="{API}", path="https://{API}/{run}"),
               http=proxy_request("http://{ALLOWED}/"))
        """,
        run=run,
        runtime=runtime,
    )
    reasons = {
        "https_port": "https-only-through-connect",
        "https": "https-only-through-connect",
        "credential_port": "https-only-through-connect",
        "ftp": "scheme-not-allowed",
        "ftp_80": "scheme-not-allowed",
        "whois": "scheme-not-allowed",
    }
    for name, reason in reasons.items():
        assert result[name].get("status") == 403, (name, result[name])
        assert f"Reason: {reason}" in result[name]["body"], (name, result[name])
    assert " 403 Forbidden" in result["inside_port"]["reply"], result["inside_port"]
    assert "Reason: port-not-allowed" in result["inside_port"]["reply"], result["inside_port"]
    assert "Reason: scheme-not-allowed" in result["inside_ftp"]["reply"], result["inside_ftp"]
    # The controls: https to 443 inside the decrypted tunnel, and plain http to 80, pass.
    assert " 200 OK" in result["inside"]["reply"], result["inside"]
    assert result["http"]["status"] == 200, result["http"]

    refused = lines(lab, run, decision="refused")
    assert sorted(line["reason"] for line in refused) == sorted(
        [*reasons.values(), "port-not-allowed", "scheme-not-allowed"]
    ), refused
    assert not [line for line in lab.proxy_log(run) if line.get("status") in ("502", "503")]
    assert [e["path"] for e in lab.upstream_log()].count(f"/{run}") == 1


def test_the_tls_server_name_must_be_the_connect_host(lab, runtime):
    run = egress.new_run()
    result = lab.sandbox(
        f"""
        report(same=connect("{ALLOWED}:443", sni="{ALLOWED}"),
               refused_sni=connect("{ALLOWED}:443", sni="{REFUSED}"),
               other_allowed_sni=connect("{ALLOWED}:443", sni="{OTHER_ALLOWED}"),
               no_sni=connect("{ALLOWED}:443", sni=None),
               reverse=connect("{REFUSED}:443", sni="{ALLOWED}"),
               not_tls=connect("{ALLOWED}:443", send=b"GET /smuggled HTTP/1.1\\r\\n\\r\\n"))
        """,
        run=run,
        runtime=runtime,
    )
    assert result["same"]["tls"] == "established" and " 200 OK" in result["same"]["reply"]
    for name in ("refused_sni", "other_allowed_sni", "no_sni"):
        # The CONNECT was answered (its host is allowed), then the proxy read the client hello
        # and closed the connection: no TLS session, no server.
        assert result[name]["connect_status"] == 200, result[name]
        assert "tls" not in result[name] and "EOF" in result[name]["error"], result[name]
    assert "Reason: host-not-on-allow-list" in result["reverse"]["reply"], result["reverse"]
    assert result["not_tls"].get("reply", "") == "", result["not_tls"]

    sni = lines(lab, run, decision="refused", reason="sni-differs-from-connect-host")
    assert sorted(line["sni"] for line in sni) == sorted([REFUSED, OTHER_ALLOWED, "-"])
    assert all(line["host"] == ALLOWED and line["tls"] == "terminate" for line in sni)
    assert lines(lab, run, decision="refused", reason="not-tls-inside-connect")
    assert not [e for e in lab.upstream_log() if e["path"] == "/smuggled"]


def test_an_address_is_refused_even_when_an_allowed_name_has_it(lab, runtime):
    run = egress.new_run()
    ip = lab.fake_ip  # the address the allowed names resolve to
    result = lab.sandbox(
        f"""
        report(http=fetch("http://{ip}/", headers={{"Host": "{ALLOWED}"}}),
               connect=connect("{ip}:443", sni="{ALLOWED}"),
               mapped=fetch("http://[::ffff:{ip}]/"),
               metadata=fetch("http://169.254.169.254/latest/meta-data/"),
               inward=fetch("http://{INWARD}/"),
               inward_tls=connect("{INWARD}:443", sni="{INWARD}"))
        """,
        run=run,
        runtime=runtime,
    )
    for name in ("http", "mapped", "metadata"):
        assert "Reason: ip-address-not-a-name" in result[name]["body"], result[name]
    assert "Reason: ip-address-not-a-name" in result["connect"]["reply"], result["connect"]
    # An allowed name that resolves to a private address (as Redis or the agent would).
    assert "Reason: host-resolves-to-blocked-network" in result["inward"]["body"]
    assert "Reason: host-resolves-to-blocked-network" in result["inward_tls"]["reply"]
    assert len(lines(lab, run, decision="refused", reason="ip-address-not-a-name")) == 4
    assert len(lines(lab, run, decision="refused", reason="host-resolves-to-blocked-network")) == 2
    # The refusal is the policy's: the proxy itself reaches that service.
    reach = lab.proxy.exec_run(
        [
            "python3",
            "-c",
            f"import urllib.request as u; print(u.urlopen('http://{INWARD}/').read())",
        ]
    )
    assert b"hello from" in reach.output, reach.output


# In the proxy's container: ask its resolver (resolver.py, on 127.0.0.1:53) for A records, over
# UDP and TCP, as Squid does.
ASK_RESOLVER = r"""
import json, socket, struct, sys

def skip(message, at):
    while message[at]:
        if message[at] & 0xC0 == 0xC0:
            return at + 2
        at += 1 + message[at]
    return at + 1

def addresses(reply):
    answers, at = struct.unpack("!H", reply[6:8])[0], skip(reply, 12) + 4
    found = []
    for _ in range(answers):
        at = skip(reply, at)
        kind, _, _, length = struct.unpack("!HHIH", reply[at:at + 10])
        if kind == 1:
            found.append(socket.inet_ntoa(reply[at + 10:at + 14]))
        at += 10 + length
    return found

def ask(name, tcp):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    query = bytes.fromhex("beef01000001000000000000") + labels + b"\0\0\1\0\1"
    if tcp:
        with socket.create_connection(("127.0.0.1", 53), timeout=10) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            reply = sock.makefile("rb")
            return addresses(reply.read(struct.unpack("!H", reply.read(2))[0]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(query, ("127.0.0.1", 53))
        return addresses(sock.recv(4096))

print(json.dumps({f"{name} {tcp}": ask(name, tcp) for name in sys.argv[1:] for tcp in (0, 1)}))
"""


def test_squids_resolver_hands_it_no_blocked_address(lab):
    """What Squid gets when it resolves: an allowed public name as it is; a name whose answer is
    private, a stand-in that the policy refuses and no connection can reach (224.0.0.0)."""
    asked = lab.proxy.exec_run(["python3", "-c", ASK_RESOLVER, ALLOWED, INWARD])
    assert asked.exit_code == 0, asked.output
    answers = json.loads(asked.output)
    assert answers == {
        f"{ALLOWED} 0": [lab.fake_ip],
        f"{ALLOWED} 1": [lab.fake_ip],
        f"{INWARD} 0": ["224.0.0.0"],
        f"{INWARD} 1": ["224.0.0.0"],
    }, answers


@pytest.fixture(scope="module")
def busy_lab():
    """A lab whose runs may make many thousands of requests."""
    egress.build_images()
    lab = egress.EgressLab(max_bytes=2_000_000_000, max_requests=1_000_000)
    yield lab
    lab.close()


REBINDING = """
import threading, time
url = "http://{name}/"
first = fetch(url)  # Squid resolves the name: the fake internet's (public) address
# Squid keeps an answer at least negative_dns_ttl (60 s), whatever its TTL, then asks again:
# perhaps after the check of a request and before its connect. Twelve clients keep requests
# going across that moment (the answer expires at a whole second, 59 or 60 s from now).
start = int(time.time()) + 58
time.sleep(max(0, start - time.time()))
statuses, lock = {{}}, threading.Lock()

def client():
    while time.time() < start + 5:
        status = str(fetch(url, timeout=10).get("status"))
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

clients = [threading.Thread(target=client) for _ in range(12)]
for thread in clients:
    thread.start()
for thread in clients:
    thread.join()
report(first=first, statuses=statuses)
"""


def test_a_name_that_turns_private_between_check_and_connect_is_never_connected_to(busy_lab):
    """DNS rebinding: rebind-*.allowed.test is allowed, and answers the fake internet's address
    first, then the private service's. Squid refuses a private answer at its check, but connects
    with a later lookup when the cached answer expired in between: before its resolver replaced
    private answers, requests checked against the public address reached the private service.
    (Under runc only: the lookups are the proxy's, whatever runs the sandbox.)"""
    lab, run = busy_lab, egress.new_run()
    name = f"rebind-{uuid.uuid4().hex[:8]}.allowed.test"
    result = lab.sandbox(REBINDING.format(name=name), run=run, timeout=300)
    assert result["first"]["body"] == f"hello from {name} over http\n", result
    assert [e["host"] for e in lab.upstream_log()].count(name) >= 1  # the public server
    # The answer changed, and Squid asked again and saw it: it refused from then on...
    assert lab.dns_log("0001").count(name) >= 2, lab.dns_log()
    refused = lines(lab, run, decision="refused", reason="host-resolves-to-blocked-network")
    assert refused and result["statuses"].get("403"), (result["statuses"], lab.proxy_log(run)[-5:])
    # ...and no request, however it straddled the moment, reached the private service.
    assert [e for e in lab.upstream_log(lab.inward) if e["host"] == name] == [], result
    print(f"rebinding: {result['statuses']} (status: requests)")


def gateway(network) -> str:
    """The host's address on a network (Docker gives it the subnet's first address by default)."""
    config = network.attrs["IPAM"]["Config"][0]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@pytest.fixture
def host_listener():
    """A TCP server on every address of the machine running the tests: the host's services."""
    port = free_port()
    server = socket.create_server(("0.0.0.0", port))
    server.settimeout(0.5)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


def test_no_way_around_the_proxy(lab, runtime, host_listener):
    """Direct connections: the outside server, the host's services through any gateway address,
    a cloud's metadata service, a private service; and the proxy's other ports."""
    networks = [lab.egress, lab.outside, lab.lan, lab.client.networks.get("bridge")]
    targets = {f"gateway of {network.name}": gateway(network) for network in networks}
    inward_ip = lab.inward.attrs["NetworkSettings"]["Networks"][lab.lan.name]["IPAddress"]
    result = lab.sandbox(
        f"""
        targets = {targets!r}
        ports = list(range(1, 1025)) + [3129, 3130, 3401, 4827, 8080, 8443, 9090]
        report(outside=[tcp("{lab.fake_ip}", 80), tcp("{lab.fake_ip}", 443)],
               host={{name: tcp(ip, {host_listener}, 1) for name, ip in targets.items()}},
               metadata=tcp("169.254.169.254", 80),
               inward=tcp("{inward_ip}", 80),
               proxy_open=[p for p in ports if tcp("{lab.proxy_ip}", p, 1) == "connected"],
               proxy=tcp("{lab.proxy_ip}", 3128))
        """,
        runtime=runtime,
    )
    assert not any(r == "connected" for r in result["outside"]), result["outside"]
    assert not any(r == "connected" for r in result["host"].values()), result["host"]
    assert result["metadata"] != "connected" and result["inward"] != "connected"
    assert result["proxy"] == "connected"
    assert result["proxy_open"] == [], result["proxy_open"]  # 3128 is its only port


def test_dns_answers_nothing_and_no_query_leaves(lab, runtime):
    """The sandbox has no resolver that answers (the proxy resolves): no name resolves, and a
    query sent to a resolver it was given never gets there (no DNS tunnel)."""
    secret = f"data-{uuid.uuid4().hex[:12]}"
    code = f"""
        report(**{{name: resolve(name) for name in ["{ALLOWED}", "{REFUSED}", "{secret}.{API}"]}})
        """
    # One second per try, one try: an answer would come in milliseconds.
    quick = ["timeout:1", "attempts:1"]
    for dns in (None, [lab.fake_ip]):  # Docker's embedded resolver; one that would answer
        result = lab.sandbox(code, runtime=runtime, dns=dns, dns_opt=quick)
        assert all(isinstance(answer, str) and "gaierror" in answer for answer in result.values())
    assert not [name for name in lab.dns_log() if secret in name]
    # The same lookups from the outside network: the names resolve, the queries arrive.
    control = f"{secret}-control"
    outside = lab.sandbox(
        f'report(a=resolve("{ALLOWED}"), b=resolve("{control}.example.com"))',
        runtime=runtime,
        network=lab.outside.name,
        dns=[lab.fake_ip],
        dns_opt=quick,
    )
    assert outside["a"] == [lab.fake_ip]
    assert [name for name in lab.dns_log() if control in name]


def test_proxy_admin_pages_are_refused(lab, runtime):
    run = egress.new_run()
    result = lab.sandbox(
        f"""
        host, port, auth = proxy_auth()
        def raw(request_line, *headers):
            sock = socket.create_connection((host, port), timeout=10)
            lines = [request_line, *headers, f"Proxy-Authorization: {{auth}}", "", ""]
            sock.sendall("\\r\\n".join(lines).encode())
            return sock.recv(4096).decode(errors="replace").split("\\r\\n")[0]
        report(proxied=fetch(f"http://{{host}}:3128/squid-internal-mgr/info"),
               named=fetch("http://{ALLOWED}/squid-internal-mgr/menu"),
               origin_form=raw("GET /squid-internal-mgr/info HTTP/1.1", f"Host: {{host}}:3128"),
               cache_object=raw(f"GET cache_object://{{host}}/info HTTP/1.0"))
        """,
        run=run,
        runtime=runtime,
    )
    for name in ("proxied", "named"):
        assert "Reason: proxy-admin-interface" in result[name]["body"], result[name]
    for name in ("origin_form", "cache_object"):
        assert " 403 " in result[name], result[name]
    assert len(lines(lab, run, decision="refused", reason="proxy-admin-interface")) == 4


def test_credentials_are_added_by_the_proxy_and_found_nowhere_in_the_sandbox(lab, runtime):
    run = egress.new_run()
    # Decoys shaped like the token: the search must find them, so it would find the token.
    decoy_env, decoy_file = (f"upstream-{secrets.token_hex(16)}" for _ in range(2))
    result = lab.sandbox(
        SEARCH_FOR_TOKENS
        + textwrap.dedent(f"""
        open("/tmp/notes.txt", "w").write("{decoy_file}")
        api = fetch("https://{API}/{run}", headers={{"Authorization": "Bearer forged"}})
        plain = fetch("http://{API}/")
        tls = connect("{API}:443", sni="{API}", verify=True)
        found, places = search_for_tokens(
            ("environ", "cmdline", "maps", "status", "mountinfo", "cgroup"))
        report(api=api, plain=plain, issuer=tls.get("issuer"), found=found, places=places)
        """),
        run=run,
        runtime=runtime,
        environment={"NOTES_KEY": decoy_env},
    )
    assert result["api"]["status"] == 200, result["api"]
    assert result["api"]["body"] == f"hello from {API} over https\n", result["api"]
    assert result["issuer"] == "Sandbox egress proxy CA"  # decrypted by the proxy, this host only
    assert "Reason: credential-host-needs-https" in result["plain"]["body"]
    found = {token for token, _ in result["found"]}
    assert found == {decoy_env, decoy_file}, result["found"]  # the decoys, and nothing else
    assert {place for _, place in result["found"]} >= {"environ", "/proc", "/tmp/notes.txt"}
    assert result["places"] > 1000, result["places"]

    upstream = [e for e in lab.upstream_log() if e["host"] == API]
    assert upstream and all(e["scheme"] == "https" for e in upstream)
    (request,) = [e for e in upstream if e["path"] == f"/{run}"]
    # Exactly the proxy's header: the one the sandbox sent was dropped, not sent as well.
    sent = [value for name, value in request["headers"] if name.lower() == "authorization"]
    assert sent == [f"Bearer {lab.token}"], request["headers"]
    assert lab.token not in lab.proxy.logs().decode()  # nor in the proxy's own log


def test_caps_per_run(lab, runtime):
    """The byte cap is checked at each new request against what the run's finished requests
    used; one plain-HTTP response is cut at the cap; one spliced tunnel is not (its bytes are
    counted when it closes). The request cap counts what the proxy can see."""
    size = 150_000
    bytes_run, tunnel_run, requests_run = (egress.new_run() for _ in range(3))
    result = lab.sandbox(
        fetches_one_by_one(f"http://{ALLOWED}/bytes/{size}"),
        run=bytes_run,
        runtime=runtime,
    )
    allowed = result["statuses"].count(200)
    # Two responses leave the run under its cap, the third takes it over: the fourth request
    # is refused (a fifth would mean the total lagged behind).
    assert allowed in (3, 4) and result["statuses"][allowed:] == [403] * (6 - allowed), result
    assert "Reason: byte-cap" in result["last"]["body"]
    assert lines(lab, bytes_run, decision="refused", reason="byte-cap")

    result = lab.sandbox(
        f"""
        import time
        big_http = fetch("http://{ALLOWED}/bytes/{MAX_BYTES * 3}")
        big_tunnel = fetch("https://{ALLOWED}/bytes/{MAX_BYTES * 3}")
        time.sleep(0.5)
        report(big_http=big_http, big_tunnel=big_tunnel, after=fetch("http://{ALLOWED}/"))
        """,
        run=tunnel_run,
        runtime=runtime,
    )
    assert result["big_http"]["status"] == 403, result["big_http"]  # too big: refused whole
    assert result["big_tunnel"].get("length") == MAX_BYTES * 3, result["big_tunnel"]
    assert "Reason: byte-cap" in result["after"]["body"]

    result = lab.sandbox(
        f"""
        import time
        statuses = []
        for _ in range({MAX_REQUESTS + 5}):
            statuses.append(fetch("http://{ALLOWED}/").get("status"))
            time.sleep(0.1)
        report(statuses=statuses, last=fetch("http://{ALLOWED}/"))
        """,
        run=requests_run,
        runtime=runtime,
    )
    allowed = result["statuses"].count(200)
    assert MAX_REQUESTS <= allowed <= MAX_REQUESTS + 1, result["statuses"]
    assert "Reason: request-cap" in result["last"]["body"]


def test_a_run_cannot_pass_for_another(lab, runtime):
    """Credentials are an HMAC of the run id under a key the sandbox never sees: a made-up run
    (fresh caps) or another run's id with a guessed password gets a 407."""
    victim = egress.new_run()
    code = f'report(http=fetch("http://{ALLOWED}/"), https=fetch("https://{ALLOWED}/"))'
    forged = {
        "made-up run": lab.proxy_url(egress.new_run(), password="0" * 32),
        "another run": lab.proxy_url(victim, password=secrets.token_hex(16)),
        "no password": lab.proxy_url(victim, password=""),
    }
    for what, url in forged.items():
        result = lab.sandbox(code, runtime=runtime, proxy_url=url)
        assert result["http"]["status"] == 407, (what, result)
        assert "407" in result["https"]["error"], (what, result)
    assert not lab.proxy_log(victim)  # nothing logged (or charged) as the victim
    assert lab.proxy_log("-")


def exec_python(container, code: str, timeout: float = 60) -> bytes:
    """`docker exec` of PROBES + code, bounded in time (the SDK's exec has no timeout)."""
    done: dict = {}
    command = ["python", "-c", egress.PROBES + code]
    thread = threading.Thread(
        target=lambda: done.update(result=container.exec_run(command)), daemon=True
    )
    thread.start()
    thread.join(timeout)
    assert "result" in done, f"docker exec did not return within {timeout} s"
    return done["result"].output


def test_a_running_sandbox_attached_later_reaches_the_proxy(lab, runtime):
    """What a pool does: start the sandbox with no network, attach it to the egress network
    only when it is taken for a run that asked for egress (then it is never reused)."""
    run = egress.new_run()
    options = lab.sandbox_options(run, runtime=runtime, network="none")
    container = lab.client.containers.run(
        egress.SANDBOX_IMAGE,
        ["python", "-c", "import time; time.sleep(120)"],
        detach=True,
        **options,
    )
    try:
        before = exec_python(container, f'report(r=fetch("http://{ALLOWED}/", timeout=5))')
        lab.client.networks.get("none").disconnect(container)
        lab.egress.connect(container)
        after = exec_python(container, f'report(r=fetch("http://{ALLOWED}/", timeout=20))')
    finally:
        container.remove(force=True)
    assert b"Network is unreachable" in before, before  # no network until attached
    assert b'"status": 200' in after, after
    # The proxy logs a request once it has answered it, and Docker copies that line on its own
    # time: the answer can come back before the line can be read.
    wait_for(
        lambda: lines(lab, run, decision="allowed", host=ALLOWED),
        timeout=30,
        what="the proxy's log line for the attached sandbox's request",
    )
