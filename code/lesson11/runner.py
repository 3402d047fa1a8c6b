"""Runs the dataset's cases through the research service, in process: each case is a request to
`POST /v1/research` of the app of its environment (lesson11.compose), and its spans are what the
evaluators read (lesson11.traces, or Phoenix: lesson11.phoenix)."""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from . import compose
from .evaluators import Run, Verdict, evaluate
from .traces import InMemoryTraces, Span

DATASET = Path(__file__).resolve().parent / "dataset.json"


def load(path: Path = DATASET) -> dict:
    """The dataset, its cases checked: ids unique, every case with a kind and a reason."""
    dataset = json.loads(path.read_text(encoding="utf-8"))
    ids = [case["id"] for case in dataset["cases"]]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"{path.name}: case ids used twice: {duplicated}")
    for case in dataset["cases"]:
        missing = [k for k in ("kind", "reason", "expect", "budget") if k not in case]
        if missing:
            raise ValueError(f"{path.name}: case {case['id']} has no {', '.join(missing)}")
    return dataset


def expand(value):
    """{"repeat": s, "times": n} is s repeated n times, wherever it stands."""
    if isinstance(value, dict):
        if set(value) == {"repeat", "times"}:
            return value["repeat"] * value["times"]
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def request(case: dict) -> dict:
    """The keyword arguments of the case's POST: a query, a JSON body, or raw bytes."""
    if "body" in case:
        body = expand(case["body"])
        return {"content": body.encode(), "headers": {"content-type": "application/json"}}
    if "json" in case:
        return {"json": expand(case["json"])}
    return {"json": {"query": expand(case["query"])}}


class Suite:
    """The apps of every environment, started once (`with Suite(...) as suite`), and the spans
    each request made. `spans_of(response)` says where spans come from: this process's exporter
    by default."""

    def __init__(
        self,
        spans_of: Callable[[object], list[Span]] | None = None,
        **agent_options,
    ):
        if spans_of is None:
            memory = InMemoryTraces()  # before the apps: they trace only once a provider exists
            spans_of = lambda response: memory.take()  # noqa: E731
        self.spans_of = spans_of
        self.apps = {env: compose.app(env, **agent_options) for env in compose.ENVIRONMENTS}
        self._stack = ExitStack()
        self.clients: dict[str, TestClient] = {}

    def __enter__(self) -> "Suite":
        for env, app in self.apps.items():
            client = TestClient(app, raise_server_exceptions=False)
            self.clients[env] = self._stack.enter_context(client)
        self.spans_of(None)  # the start-up's spans, if any, belong to no case
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def run(self, case: dict) -> tuple[Run, float]:
        client = self.clients[case.get("environment", "notes")]
        self.spans_of(None)  # what ran since the last case (a judge's model call) is not this one's
        started = time.perf_counter()
        response = client.post("/v1/research", **request(case))
        seconds = time.perf_counter() - started
        try:
            body = response.json()
        except ValueError:
            body = {"text": response.text}
        spans = self.spans_of(response)
        # The request's own trace, which its `traceresponse` header names (research_agent's
        # tracing): anything else this process traced meanwhile belongs to no case.
        header = response.headers.get("traceresponse", "")
        if header.count("-") == 3:
            spans = [s for s in spans if s.trace_id == header.split("-")[1]]
        return Run(case, response.status_code, body, spans), seconds


@contextmanager
def suite(**options) -> Iterator[Suite]:
    with Suite(**options) as running:
        yield running


def run_cases(
    running: Suite, cases: list[dict], runs: int = 1, judge=None, progress=None
) -> list[tuple[Run, list[Verdict]]]:
    """Every case `runs` times, each run evaluated: [(run, its verdicts)], case by case."""
    results = []
    for case in cases:
        for _ in range(runs):
            run, _seconds = running.run(case)
            results.append((run, evaluate(run, judge)))
            if progress:
                progress(case, results[-1][1])
    return results
