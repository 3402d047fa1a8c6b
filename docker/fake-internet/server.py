"""An "outside" web server for the egress tests, offline: HTTP on 80 and HTTPS on 443, answering to
whatever names its Docker network aliases give it, with a certificate from a CA the test made.
Each request it receives is printed as one JSON line on stdout (headers included), so a test can
check what the upstream saw: `docker logs`. It also logs the DNS queries sent to it (UDP 53).

  GET /bytes/N   N bytes (a download of a chosen size)
  POST ...       reads the body, answers its length
  GET anything   "hello from HOST over SCHEME"

Usage: python server.py CERT KEY   (PEM files; the certificate names every alias)
"""

import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"x" * 65536


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
        print(json.dumps(line), flush=True)

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


def record_dns(port: int = 53) -> None:
    """Log the name in every DNS query that reaches this server, and answer "no such name": a test
    points a container's resolver here to see whether its queries get out at all."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        packet, client = sock.recvfrom(4096)
        labels, at = [], 12
        while at < len(packet) and packet[at]:
            labels.append(packet[at + 1 : at + 1 + packet[at]].decode(errors="replace"))
            at += 1 + packet[at]
        print(json.dumps({"dns": ".".join(labels), "client": client[0]}), flush=True)
        if len(packet) >= 12:  # the query back, flagged as a response with NXDOMAIN
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
    threading.Thread(target=record_dns, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
