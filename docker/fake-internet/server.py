"""An "outside" web server for the egress tests, offline: HTTP on 80 and HTTPS on 443, answering to
whatever names its Docker network aliases give it, with a certificate from a CA the test made.
Each request it receives is printed as one JSON line on stdout (headers included), so a test can
check what the upstream saw: `docker logs`. It also logs the DNS queries sent to it (UDP 53).

  GET /bytes/N   N bytes (a download of a chosen size)
  POST ...       reads the body, answers its length
  GET anything   "hello from HOST over SCHEME"

DNS rebinding, for the proxy's tests: a name rebind-*.<anything> is answered (A, TTL 0) with this
server's own address the first time it is asked, and with REBIND_TO every time after (AAAA: no
record). Every other name: "no such name".

Usage: python server.py CERT KEY [REBIND_TO]   (PEM files; the certificate names every alias)
"""

import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"x" * 65536
LOG_LOCK = threading.Lock()


def log(entry: dict) -> None:
    """One JSON line on stdout, whole: requests are served on threads of their own."""
    with LOG_LOCK:
        print(json.dumps(entry), flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-internet"

    def record(self, body_length: int = 0) -> None:
        line = {
            "scheme": self.server.scheme,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host", ""),
            "headers": [[name, value] for name, value in self.headers.items()],  # repeats too
            "body_length": body_length,
            "client": self.client_address[0],
        }
        log(line)

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.record()
        if self.path.startswith("/bytes/"):
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while size > 0:
                self.wfile.write(CHUNK[: min(size, len(CHUNK))])
                size -= len(CHUNK)
            return
        host = self.headers.get("Host", "")
        self.reply(f"hello from {host} over {self.server.scheme}\n".encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = 0
        while received < length:
            received += len(self.rfile.read(min(65536, length - received)))
        self.record(received)
        self.reply(f"received {received} bytes\n".encode())

    def log_message(self, format: str, *args) -> None:  # the JSON line is the log
        pass


def record_dns(rebind_to: str | None, port: int = 53) -> None:
    """Log the name in every DNS query that reaches this server, and answer "no such name": a test
    points a container's resolver here to see whether its queries get out at all. A rebind-*
    name is answered instead (see the top), once with this server's address, then with
    `rebind_to`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    own = socket.gethostbyname(socket.gethostname())  # Docker's /etc/hosts: this container
    answered: set[str] = set()
    while True:
        packet, client = sock.recvfrom(4096)
        labels, at = [], 12
        while at < len(packet) and packet[at]:
            labels.append(packet[at + 1 : at + 1 + packet[at]].decode(errors="replace"))
            at += 1 + packet[at]
        name, kind = ".".join(labels), packet[at + 1 : at + 3]
        log({"dns": name, "client": client[0], "type": kind.hex()})
        if len(packet) < 12:
            continue
        question = packet[12 : at + 5]
        if rebind_to and name.startswith("rebind-") and kind == b"\x00\x01":
            address = rebind_to if name in answered else own
            answered.add(name)
            record = b"\xc0\x0c\x00\x01\x00\x01" + (0).to_bytes(4) + b"\x00\x04"
            counts = b"\x00\x01\x00\x01\x00\x00\x00\x00"
            reply = packet[:2] + b"\x81\x80" + counts + question
            sock.sendto(reply + record + socket.inet_aton(address), client)
        elif rebind_to and name.startswith("rebind-"):  # no record of that type
            sock.sendto(packet[:2] + b"\x81\x80" + b"\x00\x01" + bytes(6) + question, client)
        else:  # the query back, flagged as a response with NXDOMAIN
            flags = bytes([packet[2] | 0x80, 0x83])
            sock.sendto(packet[:2] + flags + packet[4:], client)


def serve(port: int, scheme: str, context: ssl.SSLContext | None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    server.scheme = scheme
    if context:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    serve(80, "http", None)
    serve(443, "https", context)
    rebind_to = sys.argv[3] if len(sys.argv) > 3 else None
    threading.Thread(target=record_dns, args=(rebind_to,), daemon=True).start()
    log({"ready": True})
    threading.Event().wait()


if __name__ == "__main__":
    main()
