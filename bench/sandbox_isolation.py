"""The rows `make bench-sandbox` adds for lesson 04's Going further: what gVisor and egress cost.

runtimes   the runner's fresh and pooled runs under runc and under gVisor (runsc), calls
           interleaved so both see the same machine; p50/p99 and runsc against runc.
           Target: a pooled run under runsc within 1.5x of runc.
egress     a pip-download-sized file (16 MB over HTTPS) fetched from the fake internet
           (support/egress.py) three ways: by a sandbox through the egress proxy (a
           spliced CONNECT, the way pip goes), by the host directly, and by a container with the
           sandbox's limits directly on the outside network; bytes/s and the proxy's against
           each. Target: through the proxy at least 0.8x the host's.
"""

import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench import deadline
from bench import results as bench_results
from research_agent import (
    LABEL,
    ContainerPool,
    EgressGateway,
    QueuedRunner,
    SandboxConfig,
    SandboxRunner,
)
from support import egress

CODE = "print(sum(range(1000)))"
SIZE = 16 * 1024 * 1024
RUNTIME_TARGET = 1.5
EGRESS_TARGET = 0.8

# One HTTPS download, timed where it happens: through HTTPS_PROXY when the environment has one.
FETCH = r"""
import base64, json, os, socket, ssl, time, urllib.parse
def download(host, name, size, proxy="environment"):
    start = time.perf_counter()
    if proxy == "environment":
        proxy = os.environ.get("HTTPS_PROXY")
    if proxy:
        p = urllib.parse.urlsplit(proxy)
        sock = socket.create_connection((p.hostname, p.port), timeout=60)
        auth = base64.b64encode(f"{p.username}:{p.password}".encode()).decode()
        sock.sendall(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert b" 200 " in head.split(b"\r\n")[0], head
    else:
        sock = socket.create_connection((host, 443), timeout=60)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tls = context.wrap_socket(sock, server_hostname=name)
    tls.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    got = 0
    while chunk := tls.recv(1 << 16):
        got += len(chunk)
    return got, time.perf_counter() - start
"""


async def runtimes(owner: str, n: int, registered: set[str], seconds: float = 120) -> list[str]:
    """The runtime table's lines (runsc only when the daemon has it). A run past `seconds` fails
    the benchmark (deadline.RunTimedOut); the owner's containers are swept by the caller."""
    names = ["runc"] + (["runsc"] if "runsc" in registered else [])
    runners = {}
    for name in names:
        config = dict(owner=owner, runtime=name, max_concurrent=2, max_queued=100)
        runners[name, "fresh"] = QueuedRunner(SandboxRunner(SandboxConfig(**config)))
        pooled = SandboxRunner(SandboxConfig(**config, pool_size=1))
        runners[name, "pooled"] = QueuedRunner(pooled, pool=ContainerPool(pooled))
    samples = {key: [] for key in runners}
    try:
        for key, runner in runners.items():
            if runner.pool is not None:
                runner.pool.start()
            warm_up = runner.arun(CODE, request_id="bench-warm-up")
            await deadline.bounded(warm_up, seconds, f"{' '.join(key)} warm-up")
        for _ in range(n):
            for key, runner in runners.items():
                if runner.pool is not None:  # a pooled run: its container is waiting
                    for _ in range(600):
                        if runner.pool.idle_count:
                            break
                        await asyncio.sleep(0.1)
                start = time.perf_counter()
                run = runner.arun(CODE, request_id="bench-runtime")
                result = await deadline.bounded(run, seconds, " ".join(key))
                assert result.stdout == "499500\n", result
                samples[key].append((time.perf_counter() - start) * 1000)
    finally:
        for runner in runners.values():
            await asyncio.to_thread(runner.close)
    lines = [
        "| runtime | run | p50 ms | p99 ms | p50 / runc p50 | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for mode in ("fresh", "pooled"):
        base = statistics.median(samples["runc", mode])
        for name in names:
            data = samples[name, mode]
            p50, p99 = statistics.median(data), bench_results.percentile(data, 99)
            target = ""
            if name == "runsc" and mode == "pooled":
                verdict = "met" if p50 / base <= RUNTIME_TARGET else "NOT met"
                target = f"<= {RUNTIME_TARGET}x: {verdict}"
            lines.append(
                f"| {name} | {mode} | {p50:.0f} | {p99:.0f} | {p50 / base:.2f}x | {target} |"
            )
    if "runsc" not in names:
        lines.append("(no runsc runtime on this daemon: `make gvisor` registers it)")
    return lines


def host_download(ip: str, size: int) -> tuple[int, float]:
    scope: dict = {}
    exec(FETCH, scope)  # the same function the sandboxes run, without a proxy
    return scope["download"](ip, egress.ALLOWED, size, proxy=None)


async def egress_throughput(owner: str, n: int) -> list[str]:
    """The egress table's lines."""
    egress.build_images()
    client = __import__("docker").from_env()
    lab = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix=f"bench-egress-{lab}-"))
    egress.write_certificates(folder, egress.NAMES)
    labels = {"egress-test": lab}
    network = egress.outside_network(client, f"bench-egress-{lab}-outside", labels)
    server = runner = None
    try:
        endpoint = client.api.create_endpoint_config(aliases=egress.NAMES)
        server = client.containers.run(
            egress.FAKE_INTERNET_IMAGE, ["/certs/cert.pem", "/certs/key.pem"],
            detach=True, labels=labels, network=network.name,
            networking_config={network.name: endpoint},
            volumes={str(folder): {"bind": "/certs", "mode": "ro"}}, read_only=True,
            cap_drop=["ALL"], sysctls={"net.ipv4.ip_unprivileged_port_start": "53"},
        )  # fmt: skip
        for _ in range(300):
            if b'"ready": true' in server.logs():
                break
            time.sleep(0.1)
        server.reload()
        ip = server.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        config = SandboxConfig(
            owner=owner, egress="allowlist", allowed_hosts=egress.ALLOWED,
            egress_upstream_network=network.name,
            egress_upstream_ca=str(folder / "fake-ca.pem"),
            egress_max_bytes=10 * SIZE * (n + 1), timeout_seconds=60,
        )  # fmt: skip
        runner = QueuedRunner(SandboxRunner(config, network=EgressGateway(config)))
        program = FETCH + f"print(json.dumps(download(None, {egress.ALLOWED!r}, {SIZE})))"
        direct = FETCH + f"print(json.dumps(download({ip!r}, {egress.ALLOWED!r}, {SIZE})))"
        c = runner.config
        rates: dict[str, list[float]] = {"proxy": [], "host": [], "direct": []}
        for round in range(n + 1):  # the first round warms up
            result = await runner.arun(program, request_id="bench-egress")
            got, seconds = json.loads(result.stdout)
            measured = {"proxy": (got, seconds)}
            measured["host"] = await asyncio.to_thread(host_download, ip, SIZE)
            out = client.containers.run(
                egress.SANDBOX_IMAGE, ["python", "-I", "-c", direct], network=network.name,
                remove=True, read_only=True, cap_drop=["ALL"], user="65534:65534",
                mem_limit=c.memory, nano_cpus=int(c.cpus * 1e9), labels=labels,
            )  # fmt: skip
            measured["direct"] = tuple(json.loads(out))
            for path, (got, seconds) in measured.items():
                assert got > SIZE, (path, got)
                if round:
                    rates[path].append(got / seconds)
    finally:
        if runner is not None:
            await asyncio.to_thread(runner.close)
        if server is not None:
            server.remove(force=True)
        network.remove()
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    host = statistics.median(rates["host"])
    direct = statistics.median(rates["direct"])
    lines = [
        "| download (16 MB, HTTPS) | MB/s (median) | / host | / sandbox direct | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    labels_ = {
        "host": "host, direct",
        "direct": f"container with the sandbox's limits ({c.cpus:g} CPU), direct",
        "proxy": "sandbox through the egress proxy",
    }
    for path in ("host", "direct", "proxy"):
        rate = statistics.median(rates[path])
        target = ""
        if path == "proxy":
            target = f">= {EGRESS_TARGET}x host: " + (
                "met" if rate / host >= EGRESS_TARGET else "NOT met"
            )
        lines.append(
            f"| {labels_[path]} | {rate / 1e6:.1f} | {rate / host:.2f}x | {rate / direct:.2f}x "
            f"| {target} |"
        )
    return lines


def leftovers(owner: str) -> int:
    client = __import__("docker").from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL}.owner={owner}"})
        found += client.containers.list(
            all=True, filters={"label": f"{LABEL}-egress.owner={owner}"}
        )
        return len(found)
    finally:
        client.close()
