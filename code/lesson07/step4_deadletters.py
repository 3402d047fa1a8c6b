"""Lesson 07, step 4: an event that can never succeed goes to a dead-letter topic, with the reason.

Run it:  make lesson-07 STEP=4   (starts the steps' Redis first: the container lesson07-redis)
"""

import asyncio
import json
import os
import re
from contextlib import suppress
from typing import Literal

import redis.asyncio as redis
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, ValidationError

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
MAX_DELIVERIES = 3  # delivered more often than this, an event goes to <topic>.deadletter


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


# An effect and the record that this group stored it, in one script: Redis runs it alone.
APPLY_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for _, command in ipairs(cjson.decode(ARGV[1])) do redis.call(unpack(command)) end
redis.call('SET', KEYS[1], '1', 'EX', 86400)
return 1
"""


async def apply_once(group: str, event_id: str, commands: list[list]) -> None:
    await r.eval(APPLY_ONCE, 1, f"processed:{group}:{event_id}", json.dumps(commands))


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
            [pending] = await r.xpending_range(topic, group, message_id, message_id, 1)
            deliveries, event = pending["times_delivered"], None
            try:  # a ValueError (pydantic's too) is never retried
                event = CloudEvent.model_validate_json(fields.get("data", ""))
                if deliveries > MAX_DELIVERIES:
                    raise ValueError(f"delivered {deliveries} times, more than {MAX_DELIVERIES}")
                await handler(event)
            except ValueError as exc:  # to <topic>.deadletter with the reason, and acked
                reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                letter = ["XADD", f"{topic}.deadletter", "*", "data", fields.get("data", "")]
                qid = event.data.get("question_id") if event else None  # failed, if it is one
                failed = [["HSET", f"question:{qid}", "status", "failed"]] if qid else []
                await apply_once(group, message_id, [[*letter, "reason", reason], *failed])
            except Exception as exc:  # left pending: claimed again after the visibility timeout
                print(f"{name}: delivery {deliveries} failed: {type(exc).__name__}")
                continue
            await r.xack(topic, group, message_id)  # only now that its effect is stored


async def triage(event: CloudEvent) -> None:  # routes by rules: errors win over exercises
    q = event.data  # the question
    kind = "debug" if re.search(DEBUG, q["text"], re.I) else "concepts"
    kind = "exercise" if kind != "debug" and re.search(EXERCISE, q["text"], re.I) else kind
    routed = xadd(KINDS[kind], f"{event.id}.routed", "triage", {**q, "route": kind})
    record = ["HSET", f"question:{q['question_id']}", "route", kind]
    await apply_once("triage", event.id, [record, routed])


def specialist(kind: str, llm=model):
    async def answer(event: CloudEvent) -> None:
        q, prompt = event.data, f"You are the course's {kind} specialist: answer in a few lines."
        reply = await llm.ainvoke([("system", prompt), ("human", q["text"])])
        done = ["HSET", f"question:{q['question_id']}", "status", "answered", "answer", reply.text]
        answered = xadd(PROGRESS, f"{q['question_id']}.answered", kind, q)
        await apply_once(kind, event.id, [done, answered])

    return answer


async def progress(event: CloudEvent) -> None:  # the student's questions, counted by kind
    key, kind = f"progress:{event.data['student_id']}", f"kind:{event.data['route']}"
    counts = [["HINCRBY", key, "questions", 1], ["HINCRBY", key, kind, 1]]
    await apply_once("progress", event.id, counts)


AGENTS = {LEARNING: ("triage", triage), PROGRESS: ("progress", progress)}  # topic: (group, handler)
AGENTS |= {topic: (kind, specialist(kind)) for kind, topic in KINDS.items()}
QUESTIONS = ["What is a Docker volume?", "Give me an exercise on Kubernetes"]
QUESTIONS += ["My redis client raises ConnectionError"]


async def ask(text: str) -> str:  # what the gateway does: record the question, and publish it
    qid = os.urandom(16).hex()
    asked = xadd(LEARNING, qid, "gateway", {"question_id": qid, "student_id": "ann", "text": text})
    record = ["HSET", f"question:{qid}", "student_id", "ann", "status", "pending"]
    await apply_once("gateway", qid, [record, asked])
    return qid


async def main() -> None:
    await r.flushdb()  # the steps' own Redis: each run starts empty
    down = ChatOpenAI(base_url="http://127.0.0.1:9/v1", api_key="none", max_retries=0)
    AGENTS[KINDS["exercise"]] = ("exercise", specialist("exercise", down))  # nothing on port 9
    agents = [asyncio.create_task(consume(topic, *agent)) for topic, agent in AGENTS.items()]
    asked = [await ask(text) for text in QUESTIONS]
    await r.xadd(LEARNING, {"data": "not a cloud event"})
    for _ in range(600):  # until each group has read (lag) and acked (pending) it all: 60 s at most
        groups = [g for t in AGENTS if await r.exists(t) for g in await r.xinfo_groups(t)]
        if len(groups) == len(AGENTS) and not any(g["lag"] or g["pending"] for g in groups):
            break
        await asyncio.sleep(0.1)
    for text, qid in zip(QUESTIONS, asked, strict=True):
        print(text, "->", *await r.hmget(f"question:{qid}", "route", "status", "answer"))
    print("progress:ann", dict(sorted((await r.hgetall("progress:ann")).items())))
    letters = [(t, f["reason"]) for t in AGENTS for _, f in await r.xrange(f"{t}.deadletter")]
    print(*(f"{topic}.deadletter: {reason}" for topic, reason in letters), sep="\n")
    for agent in agents:
        agent.cancel()


if __name__ == "__main__":
    asyncio.run(main())
