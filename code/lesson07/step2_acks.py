"""Lesson 07, step 2: an event is acked once its effect is stored; a dead consumer's is claimed.

Run it:  make lesson-07 STEP=2   (starts the steps' Redis first: the container lesson07-redis)
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
from contextlib import suppress
from typing import Literal

import redis.asyncio as redis
from pydantic import BaseModel, Field

from chat_model import make_chat_model

LEARNING, PROGRESS = "learning.requests", "progress.requests"  # the questions; the answers
KINDS = {"concepts": "concept.requests", "debug": "debug.requests", "exercise": "exercise.requests"}
TYPES = {LEARNING: "learning.question.asked", PROGRESS: "learning.question.answered"}
TYPES |= dict.fromkeys(KINDS.values(), "learning.question.routed")  # one type of event per topic
DEBUG = r"Traceback \(most recent call last\)|\b\w+Error\b|\bexception\b|\berror\b"
EXERCISE = r"\b(exercises?|practice|quiz|drill)\b"
r = redis.Redis.from_url(os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True)
model = make_chat_model(os.getenv("OPENAI_API_KEY"))  # offline unless OPENAI_API_KEY is set
VISIBILITY_TIMEOUT_MS = 1000  # pending this long, an event's consumer is presumed dead


# Every event's envelope, CloudEvents 1.0 (what Dapr sends), checked when it is read.
class CloudEvent(BaseModel):
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128)  # unique: this event, once
    source: str = Field(min_length=1, max_length=128)  # who published it
    type: str = Field(min_length=1, max_length=128)  # what happened
    data: dict


def xadd(topic: str, event_id: str, agent: str, data: dict) -> list:  # at the stream's end
    event = CloudEvent(id=event_id, source=f"/lesson07/{agent}", type=TYPES[topic], data=data)
    return ["XADD", topic, "*", "data", event.model_dump_json()]


async def apply(commands: list[list]) -> None:
    """An effect: its commands, run together (MULTI ... EXEC)."""
    async with r.pipeline(transaction=True) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        await pipe.execute()


async def consume(topic: str, group: str, handler) -> None:
    """Read `topic` as a consumer of `group`: Redis hands each event to one consumer of a group."""
    with suppress(redis.ResponseError):  # BUSYGROUP: the group exists already
        await r.xgroup_create(topic, group, id="0", mkstream=True)
    name = f"{group}-{os.getpid()}"  # this consumer's
    while True:  # a dead consumer's event first (pending past the timeout), else a new one
        _, claimed, _ = await r.xautoclaim(topic, group, name, VISIBILITY_TIMEOUT_MS, count=1)
        new = {topic: ">"}  # else the next event that no consumer of the group has read
        read = [(topic, claimed)] if claimed else await r.xreadgroup(group, name, new, 1, 1000)
        for _, [(message_id, fields)] in read:
            await handler(CloudEvent.model_validate_json(fields["data"]))
            await r.xack(topic, group, message_id)  # only now that its effect is stored


async def triage(event: CloudEvent) -> None:  # routes by rules: errors win over exercises
    q = event.data  # the question
    kind = "debug" if re.search(DEBUG, q["text"], re.I) else "concepts"
    kind = "exercise" if kind != "debug" and re.search(EXERCISE, q["text"], re.I) else kind
    routed = xadd(KINDS[kind], f"{event.id}.routed", "triage", {**q, "route": kind})
    record = ["HSET", f"question:{q['question_id']}", "route", kind]
    await apply([record, routed])


def specialist(kind: str):
    async def answer(event: CloudEvent) -> None:
        q, prompt = event.data, f"You are the course's {kind} specialist: answer in a few lines."
        reply = await model.ainvoke([("system", prompt), ("human", q["text"])])
        done = ["HSET", f"question:{q['question_id']}", "status", "answered", "answer", reply.text]
        answered = xadd(PROGRESS, f"{q['question_id']}.answered", kind, q)
        await apply([done, answered])

    return answer


async def progress(event: CloudEvent) -> None:  # the student's questions, counted by kind
    key, kind = f"progress:{event.data['student_id']}", f"kind:{event.data['route']}"
    counts = [["HINCRBY", key, "questions", 1], ["HINCRBY", key, kind, 1]]
    await apply(counts)


AGENTS = {LEARNING: ("triage", triage), PROGRESS: ("progress", progress)}  # topic: (group, handler)
AGENTS |= {topic: (kind, specialist(kind)) for kind, topic in KINDS.items()}
QUESTIONS = ["What is a Docker volume?", "Give me an exercise on Kubernetes"]
QUESTIONS += ["My redis client raises ConnectionError"]


async def ask(text: str) -> str:  # what the gateway does: record the question, and publish it
    qid = os.urandom(16).hex()
    asked = xadd(LEARNING, qid, "gateway", {"question_id": qid, "student_id": "ann", "text": text})
    record = ["HSET", f"question:{qid}", "student_id", "ann", "status", "pending"]
    await apply([record, asked])
    return qid


async def die(event: CloudEvent) -> None:  # a consumer that crashes mid-event, as kill -9 would
    os.kill(os.getpid(), signal.SIGKILL)


async def main() -> None:
    await r.flushdb()  # the steps' own Redis: each run starts empty
    concepts = KINDS["concepts"]
    child = subprocess.Popen([sys.executable, __file__, "die"])  # the first concepts consumer
    others = [topic for topic in AGENTS if topic != concepts]
    agents = [asyncio.create_task(consume(topic, *AGENTS[topic])) for topic in others]
    asked = [await ask(text) for text in QUESTIONS]
    await asyncio.to_thread(child.wait, 120)
    [held] = await r.xpending_range(concepts, "concepts", "-", "+", 1)
    print(f"{held['consumer']} died holding {held['message_id']}: still pending (XPENDING)")
    agents.append(asyncio.create_task(consume(concepts, *AGENTS[concepts])))  # it claims it
    for _ in range(600):  # until each group has read (lag) and acked (pending) it all: 60 s at most
        groups = [g for t in AGENTS if await r.exists(t) for g in await r.xinfo_groups(t)]
        if len(groups) == len(AGENTS) and not any(g["lag"] or g["pending"] for g in groups):
            break
        await asyncio.sleep(0.1)
    print("Events on each topic:", {topic: await r.xlen(topic) for topic in AGENTS})
    for text, qid in zip(QUESTIONS, asked, strict=True):
        print(text, "->", *await r.hmget(f"question:{qid}", "route", "status", "answer"))
    print("progress:ann", dict(sorted((await r.hgetall("progress:ann")).items())))
    for agent in agents:
        agent.cancel()


if __name__ == "__main__":  # with `die`: the second process, a concepts consumer that crashes
    asyncio.run(consume(KINDS["concepts"], "concepts", die) if sys.argv[1:] == ["die"] else main())
