"""Squid's resolver: a DNS forwarder on 127.0.0.1:53 that never hands Squid a blocked address.

Squid checks a request's destination (`acl blocked_networks dst`, squid.conf) with one lookup and
connects with another when its cached answer has expired in between: a name whose answer changes
(DNS rebinding: public for the check, private for the connect) would take the proxy inward. So
Squid asks this forwarder only (`dns_nameservers 127.0.0.1`), which asks the container's own
resolver (/etc/resolv.conf) and replaces every A or AAAA record in a blocked network by a multicast
address (224.0.0.0, ff00::), which the policy refuses by name and to which no TCP connection can be
made (ENETUNREACH: no packet leaves). Whatever answer Squid holds, at the check or at the connect,
it points nowhere inward. A reply it cannot read is answered SERVFAIL: the lookup fails.

  python3 resolver.py NETWORK...     (the blocked networks; prints "ready" once listening)

Port 53 as an unprivileged user needs the container's net.ipv4.ip_unprivileged_port_start at 53
or lower (the runner sets it); Squid has no setting for another port.
"""

import ipaddress
import socket
import socketserver
import struct
import sys
import threading
from ipaddress import ip_address
from pathlib import Path

LISTEN = ("127.0.0.1", 53)
SENTINELS = {1: ip_address("224.0.0.0"), 28: ip_address("ff00::")}  # A, AAAA
TIMEOUT_SECONDS = 5
MAX_NAME_STEPS = 128


def upstream() -> str:
    """The container's resolver (Docker's 127.0.0.11 on a user network): its first IPv4 one."""
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and fields[1] != LISTEN[0]:
            try:
                return str(ipaddress.IPv4Address(fields[1]))
            except ValueError:
                continue
    raise SystemExit("resolver: no IPv4 nameserver in /etc/resolv.conf")


class Blocked:
    def __init__(self, networks: list[str]):
        self.networks = [ipaddress.ip_network(network) for network in networks]

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 is 10.0.0.1
        return any(address in n or (mapped is not None and mapped in n) for n in self.networks)


def skip_name(message: bytes, at: int) -> int:
    """Where the (possibly compressed) name starting at `at` ends."""
    for _ in range(MAX_NAME_STEPS):
        length = message[at]  # IndexError past the end
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:  # a pointer ends the name
            return at + 2
        if length & 0xC0:
            raise ValueError("a label type DNS does not use")
        at += 1 + length
    raise ValueError("a name too long")


def rewrite(reply: bytes, blocked: Blocked) -> bytes:
    """`reply` with every A and AAAA record whose address is blocked replaced in place by the
    sentinel of its family (same length, so nothing else moves). ValueError if it is malformed."""
    message = bytearray(reply)
    try:
        questions, *records = struct.unpack("!4H", message[4:12])
        at = 12
        for _ in range(questions):
            at = skip_name(message, at) + 4
        for _ in range(sum(records)):
            at = skip_name(message, at)
            kind, _, _, length = struct.unpack("!HHIH", message[at : at + 10])
            at += 10
            data = message[at : at + length]
            if len(data) != length:
                raise ValueError("a record past the end of the message")
            sentinel = SENTINELS.get(kind)
            if sentinel and length == len(sentinel.packed) and ip_address(bytes(data)) in blocked:
                message[at : at + length] = sentinel.packed
            at += length
    except (IndexError, struct.error) as error:
        raise ValueError(f"a malformed reply: {error}") from None
    return bytes(message)


def servfail(query: bytes) -> bytes:
    """The query back as a response with RCODE 2 (server failure), or nothing if unreadable."""
    if len(query) < 12:
        return b""
    return query[:2] + bytes([query[2] | 0x80, 0x82]) + query[4:]


class UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = allow_reuse_address = True


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True


class Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        query, sock = self.request
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(TIMEOUT_SECONDS)
                up.connect((self.server.upstream, 53))
                up.send(query)
                answer = rewrite(up.recv(65535), self.server.blocked)
        except (OSError, ValueError):
            answer = servfail(query)
        if answer:
            sock.sendto(answer, self.client_address)


class Tcp(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.settimeout(TIMEOUT_SECONDS * 6)
        while len(head := self.rfile.read(2)) == 2:  # one length-prefixed query after another
            query = self.rfile.read(struct.unpack("!H", head)[0])
            try:
                answer = rewrite(self.ask(query), self.server.blocked)
            except (OSError, ValueError):
                answer = servfail(query)
            self.wfile.write(struct.pack("!H", len(answer)) + answer)

    def ask(self, query: bytes) -> bytes:
        with socket.create_connection((self.server.upstream, 53), TIMEOUT_SECONDS) as up:
            up.sendall(struct.pack("!H", len(query)) + query)
            reader = up.makefile("rb")
            head = reader.read(2)
            if len(head) != 2:
                raise ValueError("no answer")
            return reader.read(struct.unpack("!H", head)[0])


def main() -> None:
    blocked, resolver = Blocked(sys.argv[1:]), upstream()
    udp, tcp = UdpServer(LISTEN, Udp), TcpServer(LISTEN, Tcp)
    for server in (udp, tcp):
        server.blocked, server.upstream = blocked, resolver
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    udp.serve_forever()


if __name__ == "__main__":
    main()
