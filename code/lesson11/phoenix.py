"""Lesson 09's viewer, Arize Phoenix, as the place the evals read spans from and write results to.

`python -m lesson11 --phoenix http://127.0.0.1:6006` (make evals PHOENIX_URL=...): the service's
spans go to Phoenix over OTLP (the project `research-agent-evals`, so they do not mix with
lesson 09's own traces), each run's spans are read back by its trace id through Phoenix's REST API
(Phoenix's own client, arize-phoenix-client), and when the suite is done the dataset is uploaded
(once per version) and the run logged as an experiment on it: one run per case and repetition,
linked to its trace, one annotation per evaluator (score 1 or 0, the reason as explanation).
"""

import time
from datetime import UTC, datetime, timedelta

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .traces import Span

PROJECT = "research-agent-evals"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WAIT_SECONDS = 30.0


def flat(attributes: dict, prefix: str = "") -> dict:
    """Phoenix nests attributes by their dots ({"gen_ai": {"tool": {"name": ...}}}): back to the
    flat keys OpenTelemetry wrote (gen_ai.tool.name)."""
    found = {}
    for key, value in (attributes or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(flat(value, f"{name}."))
        else:
            found[name] = value
    return found


def from_phoenix(span: dict) -> Span:
    def ns(stamp: str) -> int:  # exact to the microsecond Phoenix keeps
        since = datetime.fromisoformat(stamp.replace("Z", "+00:00")) - EPOCH
        return since // timedelta(microseconds=1) * 1000

    return Span(
        name=span["name"],
        trace_id=span["context"]["trace_id"],
        span_id=span["context"]["span_id"],
        parent_id=span.get("parent_id") or None,
        start_ns=ns(span["start_time"]),
        end_ns=ns(span["end_time"]),
        error=span.get("status_code") == "ERROR",
        attributes=flat(span.get("attributes") or {}),
    )


class Phoenix:
    def __init__(self, url: str):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from phoenix.client import Client

        self.url = url.rstrip("/")
        self.client = Client(base_url=self.url)
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            resource = Resource.create(
                {"service.name": "research-agent", "openinference.project.name": PROJECT}
            )
            provider = TracerProvider(resource=resource)
            trace.set_tracer_provider(provider)
        self.provider = provider
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{self.url}/v1/traces"))
        )
        self.trace_ids: dict[int, str] = {}  # id(run) -> its trace, for the experiment

    def spans_of(self, response) -> list[Span]:
        """The spans Phoenix holds for the response's trace (its `traceresponse` header), once
        the request's root has arrived and no more come."""
        if response is None:
            return []
        trace_id = response.headers["traceresponse"].split("-")[1]
        self.provider.force_flush()
        deadline, seen = time.monotonic() + WAIT_SECONDS, -1
        while True:
            spans = self.get_spans(trace_id)
            rooted = any(not s.get("parent_id") for s in spans)
            if (rooted and len(spans) == seen) or time.monotonic() > deadline:
                return [from_phoenix(s) for s in spans]
            seen = len(spans)
            time.sleep(0.2)

    def get_spans(self, trace_id: str) -> list[dict]:
        import httpx

        try:
            return self.client.spans.get_spans(
                project_identifier=PROJECT, trace_ids=[trace_id], limit=1000
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:  # the project's first spans are not in yet
                return []
            raise

    def log_experiment(self, dataset: dict, results: list, model: str) -> str:
        """The dataset (uploaded once per version) and this suite's runs as an experiment."""
        name = f"{dataset['name']} v{dataset['version']}"
        try:
            uploaded = self.client.datasets.get_dataset(dataset=name)
        except Exception:  # not there yet (the client raises on a 404)
            cases = dataset["cases"]
            uploaded = self.client.datasets.create_dataset(
                name=name,
                inputs=[
                    {"request": {k: c[k] for k in ("query", "json", "body") if k in c}}
                    for c in cases
                ],
                outputs=[{"expect": c["expect"], "budget": c["budget"]} for c in cases],
                metadata=[{"id": c["id"], "kind": c["kind"], "reason": c["reason"]} for c in cases],
                dataset_description=dataset["description"],
            )
        examples = {ex["metadata"]["id"]: ex["id"] for ex in uploaded.examples}
        experiment = self.client.experiments.create(
            dataset_id=uploaded.id,
            dataset_version_id=uploaded.version_id,
            experiment_name=f"{model} {datetime.now(UTC):%Y-%m-%d %H:%M}",
            experiment_metadata={"model": model},
            repetitions=max(sum(r.case["id"] == results[0][0].case["id"] for r, _ in results), 1),
        )
        repetition: dict[str, int] = {}
        for run, verdicts in results:
            case_id = run.case["id"]
            repetition[case_id] = repetition.get(case_id, 0) + 1
            spans = sorted(run.spans, key=lambda s: s.start_ns)
            start = (
                datetime.fromtimestamp(spans[0].start_ns / 1e9, UTC) if spans else datetime.now(UTC)
            )
            end = (
                datetime.fromtimestamp(max(s.end_ns for s in spans) / 1e9, UTC) if spans else start
            )
            logged = self.client.experiments.log_run(
                experiment_id=experiment["id"],
                dataset_example_id=examples[case_id],
                output={"status": run.status, "body": run.body},
                start_time=start,
                end_time=end,
                repetition_number=repetition[case_id],
                trace_id=spans[0].trace_id if spans else None,
            )
            for v in verdicts:
                self.client.experiments.log_evaluation(
                    experiment_run_id=logged["id"],
                    name=v.evaluator,
                    annotator_kind="LLM" if v.evaluator == "judge" else "CODE",
                    score=1.0 if v.passed else 0.0,
                    label="pass" if v.passed else "fail",
                    explanation=v.why,
                )
        url = self.client.experiments.get_experiment_url(uploaded.id, experiment["id"])
        return f"experiment logged in Phoenix: {url}"
