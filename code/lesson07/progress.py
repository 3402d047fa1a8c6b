"""Lesson 07, going further: the progress agent's effect (docs/07, "The progress agent's effect").

Progress reads its own state (the streak needs the last day a student asked, the struggle count its
previous value), so its effect is a Lua script of its own, with the same dedup check and the
processed record last as APPLY_ONCE in event_agents.py, after a check of what it is told against
the question's `asked:` record. The struggle alert is published inside
the script, when the debug count on a topic reaches STRUGGLE_THRESHOLD.
"""

import json
import time

from lesson07.contract import (
    ALERTS,
    SPECIALIST_TOPICS,
    AgentSettings,
    Malformed,
    asked_key,
    envelope,
    progress_key,
    question_data,
)
from lesson07.tracing import trace_context

# The progress agent's effect reads its own state (streak, struggles), so it is a script of its own
# with the same first and last lines. KEYS: processed record (one per question, whatever the
# event's id), the student's hash, the alerts topic. ARGV: ttl, day number, route, topic,
# threshold, alert event (JSON, published when due), maxlen, the student's ttl (the progress
# lapses with the student id), the question's asked record, the student. What a specialist says
# must be what the gateway and triage recorded (asked:, which no specialist may write), or -1:
# a specialist cannot count questions nobody asked, for someone else, or of a topic of its own.
PROGRESS_ONCE = """
local asked = redis.call('HMGET', ARGV[9], 'student_id', 'route', 'topic')
if asked[1] ~= ARGV[10] or asked[2] ~= ARGV[3] or asked[3] ~= ARGV[4] then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local day, route, topic = tonumber(ARGV[2]), ARGV[3], ARGV[4]
redis.call('HINCRBY', KEYS[2], 'questions', 1)
redis.call('HINCRBY', KEYS[2], 'topic:' .. topic, 1)
redis.call('HINCRBY', KEYS[2], 'kind:' .. route, 1)
local last = tonumber(redis.call('HGET', KEYS[2], 'last_day') or '-1')
if last == day - 1 then redis.call('HINCRBY', KEYS[2], 'streak', 1)
elseif last ~= day then redis.call('HSET', KEYS[2], 'streak', 1) end
redis.call('HSET', KEYS[2], 'last_day', day)
redis.call('EXPIRE', KEYS[2], ARGV[8])
if route == 'debug' then
  local n = redis.call('HINCRBY', KEYS[2], 'struggle:' .. topic, 1)
  if n == tonumber(ARGV[5]) then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'data', ARGV[6])
  end
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""


def make_progress(bus, settings: AgentSettings):
    progress_once = bus.redis.register_script(PROGRESS_ONCE)

    async def progress(event: dict, delivery: int, consumer: str) -> bool:
        data = question_data(event)
        if data.get("route") not in SPECIALIST_TOPICS or not isinstance(data.get("topic"), str):
            raise Malformed("data.route and data.topic are required")
        alert = envelope(
            f"{data['question_id']}.struggle",
            "/lesson07/progress",
            "learning.student.struggling",
            {
                "student_id": data["student_id"],
                "topic": data["topic"],
                "debug_requests": settings.struggle_threshold,
            },
            **trace_context(),
        )
        day = int(time.time() // 86400)
        question = data["question_id"]
        keys = [f"processed:progress:{question}", progress_key(data["student_id"]), ALERTS]
        args = [
            settings.dedup_ttl_seconds,
            day,
            data["route"],
            data["topic"],
            settings.struggle_threshold,
            json.dumps(alert),
            settings.topic_maxlen,
            settings.student_ttl_seconds,
            asked_key(question),
            data["student_id"],
        ]
        done = await progress_once(keys=keys, args=args)
        if done == -1:
            raise Malformed(f"question {question}: its record does not vouch for this answer")
        return bool(done)

    return progress
