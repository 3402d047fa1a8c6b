"""Start the egress proxy: turn the environment into Squid's policy, make the proxy's CA, run Squid.

Environment (read once, at container start):
  SANDBOX_ALLOWED_HOSTS   the hosts a sandbox may reach, separated by commas or spaces: exact names
                          (pypi.org) and *.suffix patterns (*.pythonhosted.org: any name under it,
                          not the suffix itself). Addresses are refused: the list is of names.
  SANDBOX_CREDENTIALS     one declared upstream per line: HOST=Header-Name: value. ${VAR} in the
                          value is taken from this container's environment, so the secret is set
                          only here (UPSTREAM_TOKEN=... beside it). The proxy adds the header to
                          every HTTPS request to HOST (replacing any the sandbox sent); HOST is
                          allowed by being declared. Plain HTTP to HOST is refused.
  EGRESS_RUN_KEY          the key run credentials are signed with (shared with the runner): run
                          RUN connects as http://RUN:PASSWORD@proxy:3128, where PASSWORD is
                          hex(HMAC-SHA256(EGRESS_RUN_KEY, RUN))[:32].
  SANDBOX_MAX_REQUESTS    requests per run (default 500)
  SANDBOX_MAX_BYTES       bytes per run, both directions (default 256 MiB); see squid.conf for
                          what it bounds
  SANDBOX_MAX_CONNECTIONS connections open at once from one sandbox (default 16)
  SANDBOX_BLOCKED_NETWORKS the addresses no allowed name may resolve to (default: loopback,
                          private, shared, link-local and multicast ranges). Squid resolves
                          through resolver.py, which turns them into addresses that are refused
                          too and can never be connected to (so the answer Squid connects with
                          cannot differ from the one it checked: no DNS rebinding); the container
                          needs net.ipv4.ip_unprivileged_port_start=53 for it
  SANDBOX_UPSTREAM_CA     a PEM file of extra CAs the proxy trusts for the upstreams it decrypts
                          (credential hosts), e.g. a company's internal CA
The proxy's CA (a new one per container start) is written to /run/egress/ca.pem, and, when a
volume is mounted at /run/egress-ca, there too with bundle.pem (the system CAs, those of
SANDBOX_UPSTREAM_CA and the proxy's): what a sandbox trusts to reach a credential host over HTTPS,
to read why a CONNECT was refused, and to reach a spliced host signed by an extra CA.
"""

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

STATE = Path("/run/egress")
PUBLIC = Path("/run/egress-ca")
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
SENTINELS = ("224.0.0.0/32", "ff00::/128")  # resolver.py's, for a blocked A and AAAA record
DEFAULT_BLOCKED = (
    "0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 "
    "192.168.0.0/16 224.0.0.0/4 240.0.0.0/4 ::/128 ::1/128 fc00::/7 fe80::/10 ff00::/8"
)


class ConfigError(Exception):
    pass


def hostname(name: str, what: str) -> str:
    name = name.strip().lower()
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise ConfigError(f"{what}: {name!r} is an address; the allow-list takes names")
    if len(name) > 253 or not all(LABEL.fullmatch(label) for label in name.split(".")):
        raise ConfigError(f"{what}: {name!r} is not a host name")
    return name


def allowed_hosts(text: str) -> tuple[list[str], list[str]]:
    """(exact names, suffixes) from SANDBOX_ALLOWED_HOSTS."""
    exact, suffixes = [], []
    for entry in re.split(r"[,\s]+", text.strip()):
        if not entry:
            continue
        if entry.startswith("*."):
            suffixes.append(hostname(entry[2:], "SANDBOX_ALLOWED_HOSTS"))
        elif "*" in entry:
            raise ConfigError(f"SANDBOX_ALLOWED_HOSTS: {entry!r}: only a leading '*.' is allowed")
        else:
            exact.append(hostname(entry, "SANDBOX_ALLOWED_HOSTS"))
    return exact, suffixes


def credentials(text: str, env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(host, header name, header value) from SANDBOX_CREDENTIALS, ${VAR}s filled in."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        host, sep, header = line.partition("=")
        name, colon, template = header.partition(":")
        name = name.strip()
        if not sep or not colon or not re.fullmatch(r"[A-Za-z0-9-]+", name):
            raise ConfigError(f"SANDBOX_CREDENTIALS line {number}: not HOST=Header-Name: value")
        try:
            value = Template(template.strip()).substitute(env)
        except KeyError as missing:
            raise ConfigError(
                f"SANDBOX_CREDENTIALS line {number}: ${{{missing.args[0]}}} is not set"
            ) from None
        if not value or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"SANDBOX_CREDENTIALS line {number}: an empty or multi-line value")
        found.append((hostname(host, "SANDBOX_CREDENTIALS"), name, value))
    return found


def positive(env: dict[str, str], name: str, default: int) -> int:
    text = env.get(name) or str(default)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}: {text!r} is not a positive whole number")
    return int(text)


def quoted(value: str) -> str:
    """A Squid quoted string: % starts a format code there, so it is doubled."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def policy(env: dict[str, str]) -> tuple[str, list[str]]:
    """policy.conf's text, and the credential hosts."""
    exact, suffixes = allowed_hosts(env.get("SANDBOX_ALLOWED_HOSTS", ""))
    declared = credentials(env.get("SANDBOX_CREDENTIALS", ""), env)
    hosts = sorted({host for host, _, _ in declared})
    exact = sorted(set(exact) | set(hosts))
    if not exact and not suffixes:
        raise ConfigError("SANDBOX_ALLOWED_HOSTS is empty: the proxy would refuse everything")
    key = env.get("EGRESS_RUN_KEY", "")
    if len(key) < 16:
        raise ConfigError("EGRESS_RUN_KEY: set it to a random secret of 16 characters or more")
    max_bytes = positive(env, "SANDBOX_MAX_BYTES", 256 * 1024 * 1024)
    positive(env, "SANDBOX_MAX_REQUESTS", 500)
    connections = positive(env, "SANDBOX_MAX_CONNECTIONS", 16)
    blocked = env.get("SANDBOX_BLOCKED_NETWORKS") or DEFAULT_BLOCKED
    for network in blocked.split():
        try:
            ipaddress.ip_network(network)
        except ValueError:
            raise ConfigError(f"SANDBOX_BLOCKED_NETWORKS: {network!r} is not a network") from None

    lines = ["# Written by entrypoint.py from the environment at start; see squid.conf."]
    # One regular expression per entry, anchored: a name, or one or more labels before a suffix.
    patterns = [f"^{re.escape(name)}$" for name in exact]
    patterns += [r"^([a-z0-9-]+\.)+" + re.escape(suffix) + "$" for suffix in suffixes]
    lines.append("acl allowed_hosts dstdom_regex -n -i " + " ".join(patterns))
    # Squid needs at least one value per ACL: ".invalid" names nothing (RFC 2606).
    lines.append("acl credential_hosts dstdomain -n " + (" ".join(hosts) or "credentials.invalid"))
    # resolver.py's stand-ins for a blocked answer are refused too, whatever the list says.
    lines.append(f"acl blocked_networks dst {blocked} {' '.join(SENTINELS)}")
    lines.append(f"acl too_many_connections maxconn {connections}")
    # One response or request body is cut at the run's cap (the cap on the total is in squid.conf).
    lines.append(f"reply_body_max_size {max_bytes} bytes")
    lines.append(f"request_body_max_size {max_bytes} bytes")
    for number, (host, name, value) in enumerate(declared, 1):
        acl = f"credential_{number}"
        lines.append(f"acl {acl} dstdomain -n {host}")
        # Whatever the sandbox sent under that name is dropped; the proxy's value is added.
        lines.append(f"request_header_access {name} deny {acl}")
        lines.append(f"request_header_add {name} {quoted(value)} {acl}")
    upstream_ca = env.get("SANDBOX_UPSTREAM_CA")
    if upstream_ca:
        if not Path(upstream_ca).is_file():
            raise ConfigError(f"SANDBOX_UPSTREAM_CA: {upstream_ca} is not a file")
        lines.append(f"tls_outgoing_options cafile={upstream_ca}")
    return "\n".join(lines) + "\n", hosts


def start_resolver(blocked: str) -> None:
    """resolver.py on 127.0.0.1:53, Squid's only resolver; returns once it listens. It outlives
    this process's exec into Squid, as Squid's child."""
    resolver = subprocess.Popen(
        ["python3", "/usr/local/lib/egress/resolver.py", *blocked.split()],
        stdout=subprocess.PIPE,
        text=True,
    )
    if resolver.stdout.readline().strip() != "ready":
        sys.exit("egress proxy: the resolver did not start (is the container's "
                 "net.ipv4.ip_unprivileged_port_start 53 or lower?)")  # fmt: skip
    resolver.stdout.close()


def make_ca() -> None:
    """A CA for this container's life, its key readable by the proxy alone. It signs the
    certificates Squid shows for the credential hosts it decrypts, and for the 403 it sends inside
    a refused CONNECT. (Name constraints cannot narrow it: Squid copies every name of the real
    server's certificate into the one it makes, so any upstream with more names would fail.)"""
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "30", "-subj", "/CN=Sandbox egress proxy CA",
            "-keyout", str(STATE / "ca.key"), "-out", str(STATE / "ca.pem"),
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    os.chmod(STATE / "ca.key", 0o600)
    if os.access(PUBLIC, os.W_OK):  # a volume mounted there (the image has the folder, read-only)
        shutil.copy(STATE / "ca.pem", PUBLIC / "ca.pem")
        bundle = SYSTEM_CAS.read_text() if SYSTEM_CAS.exists() else ""
        # The upstreams' extra CAs too: a sandbox talks TLS to a spliced host itself.
        upstream = os.environ.get("SANDBOX_UPSTREAM_CA")
        bundle += Path(upstream).read_text() if upstream else ""
        (PUBLIC / "bundle.pem").write_text(bundle + (STATE / "ca.pem").read_text())


def main() -> None:
    env = dict(os.environ)
    try:
        text, hosts = policy(env)
    except ConfigError as error:
        sys.exit(f"egress proxy: {error}")
    for name, default in (("SANDBOX_MAX_BYTES", 256 * 1024 * 1024), ("SANDBOX_MAX_REQUESTS", 500)):
        os.environ[name] = str(positive(env, name, default))  # the helpers read them
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "policy.conf").write_text(text)
    start_resolver(env.get("SANDBOX_BLOCKED_NETWORKS") or DEFAULT_BLOCKED)
    make_ca()
    certs = STATE / "certs"
    shutil.rmtree(certs, ignore_errors=True)
    subprocess.run(
        ["/usr/lib/squid/security_file_certgen", "-c", "-s", str(certs), "-M", "4MB"],
        check=True,
        capture_output=True,
    )
    print(f"egress proxy: allow-list {env.get('SANDBOX_ALLOWED_HOSTS', '').split()}; "
          f"credentials for {hosts or 'no host'}", file=sys.stderr, flush=True)  # fmt: skip
    os.execv("/usr/sbin/squid", ["squid", "-N", "-f", "/etc/egress/squid.conf", *sys.argv[1:]])


if __name__ == "__main__":
    main()
