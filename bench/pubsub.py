"""`make bench-pubsub`: lesson 07's questions/s and latency with 1 and 3 `concepts` consumers.

Brings up the Compose project code/lesson07/compose.yaml under a name and port of its own, then
for 1 and then 3 `concepts` containers (`--scale concepts=N`) sends BENCH_QUESTIONS concept
questions at once through the gateway and waits until every one is answered and counted. The
specialist is the bottleneck on purpose: its offline model pauses OFFLINE_TOKEN_DELAY_MS per token,
as a real model's API keeps a consumer waiting on I/O, so more consumers answer more questions on
the same 2 cores.

Throughput is questions / (last answered - first asked). Latency is per question, asked (the
gateway) to answered (the specialist's stored effect); a burst queues, so p99 is mostly queueing.
Where the time goes comes from the `trace` stream every service writes (one clock: the same host):
triage (delivered to done), queueing (triage done to the specialist's delivery), the specialist
(its delivery to done), progress (the answer stored to the count stored).

Settings (environment): BENCH_QUESTIONS (40), BENCH_TOKEN_DELAY_MS (20), BENCH_KEEP=1 leaves the
project running. Only loopback; every wait is bounded.
"""

import json
import os
import statistics
import time

import httpx

from bench import deadline
from bench import results as bench_results
from support.event_agents import ComposeProject

QUESTIONS = int(os.getenv("BENCH_QUESTIONS", "40"))
TOKEN_DELAY_MS = int(os.getenv("BENCH_TOKEN_DELAY_MS", "20"))
CONSUMERS = (1, 3)
TARGET = 2.2

# Run inside the gateway container: the trace and the questions' records, as JSON.
READ_TRACE = """
import json, pathlib, redis
password = pathlib.Path("/run/secrets/redis_password").read_text().strip()
r = redis.Redis.from_url(
    "redis://redis:6379/0", username="gateway", password=password, decode_responses=True
)
ids = json.loads(input())
print(json.dumps({"trace": [f for _, f in r.xrange("trace")],
                  "asked": {q: r.hget(f"question:{q}", "asked_at") for q in ids}}))
"""


def log(message: str) -> None:
    print(f"[bench-pubsub] {message}", flush=True)


def measure(project: ComposeProject, client: httpx.Client, consumers: int) -> dict:
    log(f"{consumers} concepts consumer(s): scaling and waiting until healthy")
    project.compose("up", "-d", "--wait", "--scale", f"concepts={consumers}")
    enrolled = client.post("/v1/students", json={"student_id": f"bench-{consumers}"})
    enrolled.raise_for_status()
    ids, headers = [], {"Authorization": f"Bearer {enrolled.json()['student_token']}"}
    for i in range(QUESTIONS):
        text = f"What is a Docker image layer? (question {consumers}-{i})"
        question = {"student_id": f"bench-{consumers}", "text": text}
        response = client.post("/v1/questions", json=question, headers=headers)
        response.raise_for_status()
        ids.append(response.json()["id"])
    log(f"sent {QUESTIONS} questions; waiting for every answer and count")
    deadline = time.monotonic() + 30 + QUESTIONS * 3
    while time.monotonic() < deadline:
        progress = client.get(f"/v1/students/bench-{consumers}/progress", headers=headers)
        counted = progress.json()["questions"]
        if counted == QUESTIONS:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"only {counted} of {QUESTIONS} questions counted in time")
    found = json.loads(
        project.compose(
            "exec", "-T", "gateway", "python", "-c", READ_TRACE, stdin=json.dumps(ids) + "\n"
        )
    )
    at: dict[tuple[str, str], float] = {}
    for f in found["trace"]:
        key = (f["event_id"], f["outcome"])
        at.setdefault(key, float(f["at"]))  # the first delivery, the outcome that stuck
    asked = {q: float(found["asked"][q]) for q in ids}
    answered = {q: at[(f"{q}.routed", "done")] for q in ids}
    latency = [answered[q] - asked[q] for q in ids]
    span = max(answered.values()) - min(asked.values())

    def median(first: tuple[str, str], second: tuple[str, str]) -> float:
        return statistics.median(
            at[(second[0].format(q), second[1])] - at[(first[0].format(q), first[1])] for q in ids
        )

    return {
        "consumers": consumers,
        "rate": QUESTIONS / span,
        "p50": bench_results.percentile(latency, 50),
        "p99": bench_results.percentile(latency, 99),
        "triage": median(("{}", "delivered"), ("{}", "done")),
        "queueing": median(("{}", "done"), ("{}.routed", "delivered")),
        "specialist": median(("{}.routed", "delivered"), ("{}.routed", "done")),
        "progress": median(("{}.routed", "done"), ("{}.answered", "done")),
    }


def main() -> int:
    settings = {"BENCH_QUESTIONS": QUESTIONS, "BENCH_TOKEN_DELAY_MS": TOKEN_DELAY_MS}
    results_file = bench_results.start("pubsub", settings)
    # One student asks every question: its rate limit is raised to let the burst through.
    project = ComposeProject(
        "bench-pubsub",
        OFFLINE_TOKEN_DELAY_MS=str(TOKEN_DELAY_MS),
        ASKS_PER_MINUTE=str(QUESTIONS * 2),
    )
    rows = []
    try:
        client = httpx.Client(base_url=project.url, timeout=10)
        for consumers in CONSUMERS:
            rows.append(measure(project, client, consumers))
    finally:
        if os.getenv("BENCH_KEEP") == "1":
            log(f"BENCH_KEEP=1: project {project.name} left running on port {project.port}")
        else:
            log(f"removing project {project.name}")
            project.down()
    print(
        f"\n{QUESTIONS} concept questions sent at once, offline model at {TOKEN_DELAY_MS} ms "
        "per token; latency is asked to answered; the last four columns are medians.\n"
    )
    print(
        "| concepts consumers | questions/s | p50 ms | p99 ms | triage ms | queueing ms "
        "| specialist ms | progress ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['consumers']} | {r['rate']:.2f} | {r['p50'] * 1000:.0f} | "
            f"{r['p99'] * 1000:.0f} | {r['triage'] * 1000:.0f} | {r['queueing'] * 1000:.0f} | "
            f"{r['specialist'] * 1000:.0f} | {r['progress'] * 1000:.0f} |"
        )
    ratio = rows[-1]["rate"] / rows[0]["rate"]
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(
        f"\n3 consumers vs 1: {ratio:.2f}× the throughput (target {TARGET}×: {verdict}); "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    results_file.write()
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
