"""A local server that speaks the OpenAI chat-completions wire format.

Tests point the real `ChatOpenAI` client at it (`OPENAI_BASE_URL=stub.base_url`), so the online
code path runs end to end with no API key and no internet. It answers plain and streamed requests,
reports token usage like the real API, and can reply with tool calls.

    with ChatCompletionsStub(replies=[{"content": "Hello there"}]) as stub:
        ...  # stub.base_url, stub.requests
"""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "stub-model"


def _count_tokens(text: str) -> int:
    return len(text.split())


class ChatCompletionsStub:
    """Serves `replies` in order, the last repeating: {"content": str} or {"tool_calls": [...]};
    or, given `respond`, what respond(request body) returns for each request."""

    def __init__(
        self,
        replies: list[dict] | None = None,
        host: str = "127.0.0.1",
        respond: Callable[[dict], dict] | None = None,
    ):
        """`host`: the address it listens on (loopback; a container reaches another one)."""
        self.replies, self.respond = replies or [], respond
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "ChatCompletionsStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_reply(self, body: dict) -> dict:
        with self._lock:
            self.requests.append(body)
            if self.respond is not None:
                return self.respond(body)
            return self.replies[min(len(self.requests), len(self.replies)) - 1]

    def _handler_class(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = stub._next_reply(body)
                usage = _usage(body, reply)
                if body.get("stream"):
                    include_usage = (body.get("stream_options") or {}).get("include_usage", False)
                    self._send_stream(reply, usage if include_usage else None)
                else:
                    self._send_json(_completion(reply, usage))

            def _send_json(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_stream(self, reply: dict, usage: dict | None) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in _chunks(reply, usage):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


def _usage(body: dict, reply: dict) -> dict:
    prompt = sum(_count_tokens(str(m.get("content") or "")) for m in body.get("messages", []))
    completion = _count_tokens(reply.get("content", "")) + 5 * len(reply.get("tool_calls", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_calls(reply: dict) -> list[dict]:
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
        }
        for i, call in enumerate(reply.get("tool_calls", []))
    ]


def _completion(reply: dict, usage: dict) -> dict:
    message: dict = {"role": "assistant", "content": reply.get("content")}
    tool_calls = _tool_calls(reply)
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": usage,
    }


def _chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _chunks(reply: dict, usage: dict | None):
    yield _chunk({"role": "assistant", "content": ""})
    words = reply.get("content", "").split(" ")
    for i, word in enumerate(words if reply.get("content") else []):
        yield _chunk({"content": word if i == 0 else " " + word})
    for i, call in enumerate(_tool_calls(reply)):
        yield _chunk({"tool_calls": [{"index": i, **call}]})
    yield _chunk({}, "tool_calls" if reply.get("tool_calls") else "stop")
    if usage is not None:
        yield {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
