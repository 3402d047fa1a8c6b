"""An egress lab in real containers, offline: a fake internet, the egress proxy and sandboxes.

    outside network (a /28 from 198.18.0.0/15, so the proxy sees "public" addresses)
        fake internet (docker/fake-internet): HTTP and HTTPS under every name in NAMES,
            with a certificate from a CA made for this lab, trusted only by its sandboxes
        proxy (docker/egress-proxy), also on:
    egress network (internal: no route out; no address for the host on its bridge)
        proxy, and the sandboxes: HTTP_PROXY/HTTPS_PROXY carry their run's credentials
    lan network (a private range): the proxy and a "service" that an allowed name resolves to,
        as Redis or the agent would be if the proxy could see them

The proxy's container resolves names of neither network through the fake internet's DNS, which
answers a rebind-* name first with the fake internet's address, then with the service's (DNS
rebinding).

Used by tests/lesson_04/test_egress_*.py (and their benchmark); nothing here is the sandbox
runner's code, which will do the same with the Docker SDK.
"""

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from pathlib import Path

import docker
import docker.errors

from support.lessons import ROOT
from support.waiting import wait_for

PROXY_IMAGE = os.environ.get("EGRESS_PROXY_IMAGE", "egress-proxy:squid")
FAKE_INTERNET_IMAGE = os.environ.get("FAKE_INTERNET_IMAGE", "fake-internet:test")
SANDBOX_IMAGE = os.environ.get("SANDBOX_IMAGE", "agent-sandbox:python")

ALLOWED = "allowed.example.test"
OTHER_ALLOWED = "other.allowed.test"  # allowed by the pattern *.allowed.test
REFUSED = "refused.example.test"
API = "api.example.test"  # the credential host
INWARD = "service.inward.test"  # allowed, but resolves to a private address
NAMES = [ALLOWED, OTHER_ALLOWED, REFUSED, API]


def build_images() -> None:
    """Build the proxy and the fake internet (from the build cache when nothing changed), unless
    EGRESS_BUILD=0 says the images under those tags are to be used as they are."""
    if os.environ.get("EGRESS_BUILD") == "0":
        return
    for tag, folder in ((PROXY_IMAGE, "egress-proxy"), (FAKE_INTERNET_IMAGE, "fake-internet")):
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(ROOT / "docker" / folder)],
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            check=True,
            capture_output=True,
            timeout=900,
        )


def runtimes() -> list[str]:
    """The runtimes a sandbox with a network can use here: runc, and runsc-net once `make gvisor`
    has registered it."""
    client = docker.from_env()
    try:
        registered = client.info().get("Runtimes", {})
    finally:
        client.close()
    return ["runc"] + (["runsc-net"] if "runsc-net" in registered else [])


def outside_network(client, name: str, labels: dict[str, str]):
    """A bridge network on a free /28 of 198.18.0.0/15, addresses the proxy counts as public
    (tests running side by side each take their own; a taken one is refused by Docker, so another
    is tried)."""
    for _ in range(20):
        block = random.randrange(8192)
        base = (198 << 24) | (18 << 16) | (block << 4)
        subnet = ".".join(str(base >> s & 255) for s in (24, 16, 8, 0)) + "/28"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        try:
            return client.networks.create(name, driver="bridge", labels=labels, ipam=ipam)
        except docker.errors.APIError as error:
            if "overlap" not in str(error).lower():
                raise
    raise RuntimeError("no free /28 in 198.18.0.0/15 after 20 tries")


def make_ca(names: list[str]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate it signs for `names`: (CA PEM, cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake internet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def write_certificates(folder: Path, names: list[str]) -> bytes:
    """make_ca(names) into `folder` as fake-ca.pem, cert.pem and key.pem, which a fake internet
    server mounts at /certs: readable by any user, as the container's is not the host's. Returns
    the CA's PEM."""
    ca, cert, key = make_ca(names)
    for name, data in (("fake-ca.pem", ca), ("cert.pem", cert), ("key.pem", key)):
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o644)
    folder.chmod(0o755)
    return ca


def run_password(key: str, run: str) -> str:
    """A run's proxy password, as the runner makes it (docker/egress-proxy/helpers.py checks it)."""
    return hmac.new(key.encode(), run.encode(), hashlib.sha256).hexdigest()[:32]


def parse_log_line(line: str) -> dict[str, str]:
    """`egress allowed run=... host=...` -> {"decision": "allowed", "run": ..., "host": ...}."""
    decision, _, rest = line.removeprefix("egress ").partition(" ")
    return {"decision": decision, **dict(re.findall(r"(\w+)=(\S*)", rest))}


class EgressLab:
    """The containers and networks above, named egress-test-ID-*; `close()` removes them all."""

    def __init__(self, *, max_bytes: int = 10_000_000, max_requests: int = 200, **proxy_env: str):
        self.id = uuid.uuid4().hex[:10]
        self.prefix = f"egress-test-{self.id}"
        self.client = docker.from_env()
        self.containers: list = []
        self.networks: list = []
        self.folder = Path(tempfile.mkdtemp(prefix=self.prefix + "-"))
        self.key = secrets.token_hex(16)
        self.token = "upstream-" + secrets.token_hex(16)
        try:
            self._start(max_bytes, max_requests, proxy_env)
        except BaseException:
            self.close()
            raise

    # ---- setting up ---------------------------------------------------------------------------
    def _network(self, suffix: str, **options):
        network = self.client.networks.create(
            f"{self.prefix}-{suffix}", driver="bridge", labels={"egress-test": self.id}, **options
        )
        self.networks.append(network)
        return network

    def _outside_network(self):
        network = outside_network(self.client, f"{self.prefix}-outside", {"egress-test": self.id})
        self.networks.append(network)
        return network

    def _run(self, suffix: str, image: str, **options):
        container = self.client.containers.run(
            image, name=f"{self.prefix}-{suffix}", detach=True, labels={"egress-test": self.id},
            **options,
        )  # fmt: skip
        self.containers.append(container)
        return container

    def _server(self, suffix: str, network, aliases: list[str], rebind_to: str | None = None):
        """A fake internet server on `network`, answering to `aliases` (and, with `rebind_to`,
        rebind-* names in DNS: server.py)."""
        endpoint = self.client.api.create_endpoint_config(aliases=aliases)
        return self._run(
            suffix, FAKE_INTERNET_IMAGE,
            command=["/certs/cert.pem", "/certs/key.pem", *([rebind_to] if rebind_to else [])],
            volumes={str(self.folder): {"bind": "/certs", "mode": "ro"}},
            network=network.name, networking_config={network.name: endpoint},
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            sysctls={"net.ipv4.ip_unprivileged_port_start": "53"},
        )  # fmt: skip

    def _start(self, max_bytes: int, max_requests: int, proxy_env: dict[str, str]) -> None:
        ca_pem = write_certificates(self.folder, NAMES + [INWARD])

        self.outside = self._outside_network()
        # internal: no route beyond its members. inhibit_ipv4: the bridge gets no address, so the
        # host (whose services answer on every address it has) is not one of those members.
        self.egress = self._network(
            "egress", internal=True, options={"com.docker.network.bridge.inhibit_ipv4": "true"}
        )
        self.lan = self._network("lan", internal=True)

        # A private service an allowed name points at (as if Redis were visible to the proxy).
        self.inward = self._server("inward", self.lan, [INWARD])
        self.inward.reload()
        self.inward_ip = self.inward.attrs["NetworkSettings"]["Networks"][self.lan.name][
            "IPAddress"
        ]
        self.fake = self._server("fake-internet", self.outside, NAMES, rebind_to=self.inward_ip)
        wait_for(lambda: b'"ready": true' in self.fake.logs(), timeout=30, what="fake internet")
        self.fake.reload()
        self.fake_ip = self.fake.attrs["NetworkSettings"]["Networks"][self.outside.name][
            "IPAddress"
        ]

        env = {
            "SANDBOX_ALLOWED_HOSTS": f"{ALLOWED} *.allowed.test {INWARD}",
            "SANDBOX_CREDENTIALS": f"{API}=Authorization: Bearer ${{UPSTREAM_TOKEN}}",
            "UPSTREAM_TOKEN": self.token,
            "EGRESS_RUN_KEY": self.key,
            "SANDBOX_MAX_BYTES": str(max_bytes),
            "SANDBOX_MAX_REQUESTS": str(max_requests),
            "SANDBOX_UPSTREAM_CA": "/certs/fake-ca.pem",
            **proxy_env,
        }
        # Its resolver (resolver.py) listens on 127.0.0.1:53, as the proxy's unprivileged user.
        # Made on the outside network first: Docker's resolver in a container whose first network
        # is internal answers the networks' names only, and forwards nothing to `dns`.
        self.proxy = self._run(
            "proxy", PROXY_IMAGE, environment=env, network=self.outside.name,
            volumes={str(self.folder): {"bind": "/certs", "mode": "ro"}},
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            tmpfs={"/run/egress": "uid=13,gid=13,mode=0700"}, dns=[self.fake_ip],
            sysctls={"net.ipv4.ip_unprivileged_port_start": "53"},
        )  # fmt: skip
        self.egress.connect(self.proxy)
        self.lan.connect(self.proxy)

        wait_for(self._proxy_ready, timeout=60, what="egress proxy accepting connections")
        self.proxy.reload()
        self.proxy_ip = self.proxy.attrs["NetworkSettings"]["Networks"][self.egress.name][
            "IPAddress"
        ]
        proxy_ca = self._read_from_proxy("/run/egress/ca.pem")
        # What the sandboxes trust: the fake internet's CA (its servers, spliced through) and the
        # proxy's (the credential host, which the proxy decrypts). Nothing else.
        (self.folder / "proxy-ca.pem").write_bytes(proxy_ca)
        (self.folder / "bundle.pem").write_bytes(ca_pem + proxy_ca)
        (self.folder / "bundle.pem").chmod(0o644)

    def _proxy_ready(self) -> bool:
        self.proxy.reload()
        if self.proxy.status != "running":
            raise RuntimeError(f"the egress proxy stopped:\n{self.proxy.logs().decode()}")
        return b"Accepting SSL bumped HTTP Socket connections" in self.proxy.logs()

    def _read_from_proxy(self, path: str) -> bytes:
        result = self.proxy.exec_run(["cat", path])
        assert result.exit_code == 0, result.output
        return result.output

    # ---- using it -----------------------------------------------------------------------------
    def proxy_url(self, run: str, password: str | None = None) -> str:
        password = password if password is not None else run_password(self.key, run)
        return f"http://{run}:{password}@{self.proxy_ip}:3128"

    def sandbox_options(
        self, run: str, *, runtime: str = "runc", network: str | None = None, **overrides
    ) -> dict:
        """What a sandbox runs with (lesson 04's limits), on the egress network with its run's
        proxy settings: keyword arguments for the Docker SDK's containers.create()."""
        url = overrides.pop("proxy_url", None) or self.proxy_url(run)
        env = {
            "HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": "", "SSL_CERT_FILE": "/etc/egress/bundle.pem",
            **overrides.pop("environment", {}),
        }  # fmt: skip
        bundle = str(self.folder / "bundle.pem")
        return {
            "name": f"{self.prefix}-sandbox-{uuid.uuid4().hex[:8]}",
            "labels": {"egress-test": self.id},
            "environment": env,
            "network": network or self.egress.name,
            "runtime": runtime,
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "user": "65534:65534",
            "tmpfs": {"/tmp": "rw,noexec,nosuid,size=16m"},
            "pids_limit": 64,
            "mem_limit": "256m",
            "volumes": {bundle: {"bind": "/etc/egress/bundle.pem", "mode": "ro"}},
            **overrides,
        }

    def sandbox(
        self, code: str, *, run: str | None = None, timeout: float = 120, **options
    ) -> dict:
        """Run `code` (after PROBES) as a sandbox does; return what it printed as JSON. `options`:
        runtime, network, environment, proxy_url, dns, ... (see sandbox_options)."""
        run = run or new_run()
        container = self.client.containers.create(
            SANDBOX_IMAGE,
            ["python", "-I", "-c", PROBES + textwrap.dedent(code)],
            **self.sandbox_options(run, **options),
        )
        try:
            container.start()
            status = container.wait(timeout=timeout)
            out = container.logs(stdout=True, stderr=False).decode()
            err = container.logs(stdout=False, stderr=True).decode()
        finally:
            container.remove(force=True)
        if status["StatusCode"] != 0:
            raise AssertionError(f"sandbox exited {status['StatusCode']}:\n{out}\n{err}")
        return json.loads(out.strip().splitlines()[-1])

    def proxy_log(self, run: str | None = None) -> list[dict[str, str]]:
        """The proxy's decision lines (its stdout), for one run or all."""
        lines = self.proxy.logs(stdout=True, stderr=False).decode().splitlines()
        parsed = [parse_log_line(line) for line in lines if line.startswith("egress ")]
        return [entry for entry in parsed if run is None or entry.get("run") == run]

    def upstream_log(self, server=None) -> list[dict]:
        """Every request the fake internet (or `server`: the inward one) received, headers too."""
        lines = (server or self.fake).logs(stdout=True, stderr=False).decode().splitlines()
        return [entry for entry in map(json.loads, lines) if "method" in entry]

    def dns_log(self, kind: str | None = None) -> list[str]:
        """The names in the DNS queries that reached the fake internet (of one type: "0001" A)."""
        lines = self.fake.logs(stdout=True, stderr=False).decode().splitlines()
        entries = [entry for entry in map(json.loads, lines) if "dns" in entry]
        return [e["dns"] for e in entries if kind is None or e.get("type") == kind]

    def close(self) -> None:
        """Remove every container and network of this lab (the sandboxes too), and its files."""
        mine = {"label": f"egress-test={self.id}"}
        for container in self.client.containers.list(all=True, filters=mine):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in reversed(self.networks):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.client.close()


def new_run() -> str:
    return "run-" + uuid.uuid4().hex[:12]


# Prepended to every sandbox program: the stdlib clients a run's code would use, each returning a
# dict (never raising), so one sandbox can try many things and print them as one JSON line.
PROBES = r'''
import base64, json, os, socket, ssl, urllib.error, urllib.parse, urllib.request

def fetch(url, headers=None, data=None, timeout=20):
    """urllib through HTTP_PROXY/HTTPS_PROXY, as any Python code would."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return {"status": response.status, "body": body[:300].decode(errors="replace"),
                    "length": len(body)}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "body": error.read()[:600].decode(errors="replace")}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}

def proxy_auth():
    proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
    token = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
    return proxy.hostname, proxy.port, "Basic " + token

def connect(target, sni=None, verify=False, send=None, timeout=10, path="/"):
    """CONNECT target (host:port) through the proxy, then a TLS handshake with server name
    `sni` (None: no SNI) and `GET path` inside (an absolute URL too); or, with `send`, those raw
    bytes instead of TLS."""
    host, port, auth = proxy_auth()
    out = {}
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                     f"Proxy-Authorization: {auth}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        out["connect_status"] = int(head.split()[1]) if head else None
        if out["connect_status"] != 200:
            out["body"] = head.decode(errors="replace")[-600:]
            return out
        if send is not None:
            sock.sendall(send)
            out["reply"] = sock.recv(4096).decode(errors="replace")[:300]
            return out
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        tls = context.wrap_socket(sock, server_hostname=sni)
        out["tls"] = "established"
        if verify:
            out["issuer"] = dict(field[0] for field in tls.getpeercert()["issuer"])["commonName"]
        host = sni or target
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while len(reply) < 4096:
            chunk = tls.recv(4096)
            if not chunk:
                break
            reply += chunk
        out["reply"] = reply.decode(errors="replace")[:1500]
    except Exception as error:
        out["error"] = f"{type(error).__name__}: {error}"
    return out

def proxy_request(url, timeout=20):
    """`GET url` sent to the proxy as written, whatever its scheme (urllib would not send ftp://
    or whois:// to an HTTP proxy): the status and the start of the body."""
    host, port, auth = proxy_auth()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {urllib.parse.urlsplit(url).netloc}\r\n"
                     f"Proxy-Authorization: {auth}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while len(reply) < 8192:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        return {"status": int(head.split()[1]) if head else None,
                "body": body[:600].decode(errors="replace")}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}

def tcp(host, port, timeout=3):
    """A direct TCP connection, bypassing the proxy."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return "connected"
    except Exception as error:
        return f"{type(error).__name__}: {error}"

def resolve(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 443)})
    except Exception as error:
        return f"{type(error).__name__}: {error}"

def report(**results):
    print(json.dumps(results))
'''
