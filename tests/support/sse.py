"""Server-sent events as a client sees them (https://html.spec.whatwg.org/#event-stream-interpretation)."""

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx


@dataclass
class Event:
    event: str = "message"  # an event with no `event:` field is a "message"
    data: str = ""
    id: str | None = None

    def json(self):
        return json.loads(self.data)


def iter_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from a stream's lines, each once its blank line arrives; comments are skipped."""
    name, data, event_id = "message", [], None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, "\n".join(data), event_id)
            name, data, event_id = "message", [], None
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield Event(name, "\n".join(data), event_id)


def parse_sse(text: str) -> list[Event]:
    """Every event of a whole SSE body."""
    return list(iter_sse(text.replace("\r\n", "\n").split("\n")))


def json_events(events: Iterable[Event], name: str) -> list:
    """The data of every `name` event, parsed as JSON."""
    return [event.json() for event in events if event.event == name]


class BackgroundStream:
    """POST `{"query": query}` to an SSE endpoint and read the answer in a thread, so the caller
    can act (stop a container) while it flows.

    `received` holds (monotonic time, event name) as events arrive; `first_token` is set at the
    first `token` event or when the stream fails; afterwards `events` or `error` holds the outcome.
    """

    def __init__(self, url: str, query: str, timeout: float = 30):
        self.received: list[tuple[float, str]] = []
        self.events: list[Event] | None = None
        self.error: Exception | None = None
        self.first_token = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(url, query, timeout), daemon=True)
        self.thread.start()

    def _read(self, url: str, query: str, timeout: float) -> None:
        events = []
        try:
            with httpx.stream("POST", url, json={"query": query}, timeout=timeout) as response:
                assert response.status_code == 200, f"stream answered {response.status_code}"
                for event in iter_sse(response.iter_lines()):
                    events.append(event)
                    self.received.append((time.monotonic(), event.event))
                    if event.event == "token":
                        self.first_token.set()
            self.events = events
        except Exception as error:
            self.error = error
        finally:
            self.first_token.set()

    def names(self) -> list[str]:
        return [name for _, name in self.received]
