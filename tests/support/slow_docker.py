"""A Docker Engine that is slow to create containers: a TCP proxy in front of the engine's socket
that holds the first `POST /containers/create` until the test releases it, and notes the request
line of everything else. What a loaded engine (or a slow guard in front of it) does to a replica,
on demand: point the replica's DOCKER_HOST at `url`."""

import contextlib
import re
import socket
import threading

from support.waiting import wait_for

REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE) (\S+) HTTP/1\.[01]\r\n")


class SlowDocker:
    def __init__(self, engine_socket: str = "/var/run/docker.sock"):
        self.engine_socket = engine_socket
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held = threading.Event()  # a create arrived, and waits
        self.release = threading.Event()  # it (and every later one) may go on
        self.requests: list[str] = []  # "METHOD path" of each request, in the order they came
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.listener.close()

    def settled(self, since: int) -> str | None:
        """What the replica did with the held container once the engine made it, seen in the
        requests from the `since`-th on (how many there were at the release): "started" or
        "removed", or None while it did neither."""
        for request in self.requests[since:]:
            if request.startswith("POST") and request.split("?")[0].endswith("/start"):
                return "started"
            if request.startswith("DELETE") and "/containers/" in request:
                return "removed"
        return None

    def release_and_expect_removed(self, engine, starts, request_id: str) -> None:
        """The end of a cancel test (lessons 10 and 12): the held create goes on only now, after
        the run or task was cancelled; the replica must remove that late container, not start it,
        leave no container labelled with the run's request id, and none of them may have started
        (`starts`: tests/support/docker_cli.ContainerStarts, made before the run began)."""
        made = len(self.requests)
        self.release.set()
        outcome = wait_for(
            lambda: self.settled(made), timeout=120, what="the late sandbox started or removed"
        )
        assert outcome == "removed", self.requests[made:]
        label = {"label": f"agent-sandbox.request-id={request_id}"}
        # sparse: a container being removed is not inspected.
        gone = lambda: engine.containers.list(all=True, filters=label, sparse=True) == []  # noqa: E731
        wait_for(gone, timeout=30, what=f"no container of the cancelled run {request_id}")
        assert starts.per("agent-sandbox.request-id").get(request_id, 0) == 0, "its code ran"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            engine.connect(self.engine_socket)
            answers = threading.Thread(target=self._pump, args=(engine, client, False))
            answers.start()
            self._pump(client, engine, True)
            answers.join(300)
        finally:
            client.close()
            engine.close()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        """Bytes from source to sink until source's end, which sink is told of (a half-close: an
        attach sends its input, then ends it)."""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                line = REQUEST_LINE.match(data) if requests else None
                if line:
                    method, path = line[1].decode(), line[2].decode()
                    self.requests.append(f"{method} {path}")
                    if method == "POST" and "/containers/create" in path and not self.held.is_set():
                        self.held.set()
                        self.release.wait(300)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
