"""A local OTLP trace collector for tests and benchmarks: it accepts what an exporter sends over
http/protobuf (POST /v1/traces) or grpc (TraceService/Export) and keeps the decoded spans."""

import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from support.ports import free_port


def service_name(resource_spans) -> str:
    for attr in resource_spans.resource.attributes:
        if attr.key == "service.name":
            return attr.value.string_value
    return ""


class OtlpCollector:
    """with OtlpCollector("grpc") as c: ... c.endpoint (for OTEL_EXPORTER_OTLP_ENDPOINT),
    c.spans() (every span received), c.requests (export calls received).

    `hosts`: the addresses it listens on, one port for all (loopback by default); a container
    reaches it at another, such as its network's gateway: c.endpoint_at(host)."""

    def __init__(self, protocol: str = "http/protobuf", hosts: tuple[str, ...] = ("127.0.0.1",)):
        self.protocol, self.hosts = protocol, hosts
        self.port = free_port()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.peers: list[str] = []  # the address each request came from, in the same order
        self.lock = threading.Lock()
        self._servers: list = []

    @property
    def endpoint(self) -> str:
        return self.endpoint_at(self.hosts[0])

    def endpoint_at(self, host: str) -> str:
        return f"http://{host}:{self.port}"

    def _keep(self, body: bytes, peer: str) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            self.requests.append(request)
            self.peers.append(peer)

    def spans(self, service: str | None = None) -> list:
        """Every span received, or those of one service (its resource's service.name)."""
        with self.lock:
            return [
                span
                for request in self.requests
                for resource in request.resource_spans
                if service is None or service_name(resource) == service
                for scope in resource.scope_spans
                for span in scope.spans
            ]

    def service_names(self) -> set[str]:
        return set(self.senders())

    def senders(self) -> dict[str, set[str]]:
        """Each service name the spans carry, and the addresses its exports came from."""
        found: dict[str, set[str]] = {}
        with self.lock:
            for request, peer in zip(self.requests, self.peers, strict=True):
                for resource in request.resource_spans:
                    found.setdefault(service_name(resource), set()).add(peer)
        return found

    def __enter__(self):
        if self.protocol == "grpc":
            self._start_grpc()
        else:
            self._start_http()
        return self

    def _start_http(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    collector._keep(body, self.client_address[0])
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        for host in self.hosts:
            server = ThreadingHTTPServer((host, self.port), Handler)
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def _start_grpc(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        collector = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 - the name gRPC calls
                collector._keep(request.SerializeToString(), context.peer())
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
        for host in self.hosts:
            server.add_insecure_port(f"{host}:{self.port}")
        server.start()
        self._servers.append(server)

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            if self.protocol == "grpc":
                server.stop(grace=None)
            else:
                server.shutdown()
                server.server_close()
