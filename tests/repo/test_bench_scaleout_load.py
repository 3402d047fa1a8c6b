"""bench-scaleout's steady load against a server slower than the load: open loop, but never more
than its bound of questions unanswered; the questions due past it are counted, not sent."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.scaleout import Load


class SlowAnswers(BaseHTTPRequestHandler):
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        time.sleep(0.5)
        with cls.lock:
            cls.in_flight -= 1
        body = b'{"answer": "slow"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_slower_than_the_load_never_has_more_than_the_bound_unanswered():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # 40 questions a second for 1.5 s, each answered after 0.5 s, at most 4 unanswered.
        load = Load(f"http://127.0.0.1:{server.server_port}", 40, 0, 30, max_in_flight=4)
        load.phase = "update"
        load.start()
        time.sleep(1.5)
        load.stop(timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    sent = len(load.results)
    assert SlowAnswers.most <= 4, SlowAnswers.most
    assert all(r.ok and r.phase == "update" for r in load.results), load.results
    # At 4 every 0.5 s, at most 4 + 4 * 3 could be sent; the rest of those due were counted (how
    # many were due depends on how much CPU the load's loop got: about 60 on an idle machine).
    assert 4 <= sent <= 16, sent
    assert load.held_back["update"] > 0, load.held_back
