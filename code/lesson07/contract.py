"""Lesson 07's contract, shared by the agents (event_agents.py) and the gateway (gateway.py):
the settings, the topics and what each accepts, the CloudEvents envelope and its validation, the
Redis keys, the bounds that keep Redis from growing without end, and how progress is read back.
"""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import redis.asyncio as redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# Docker and Compose mount secrets here; on the host, REDIS_PASSWORD in the environment does it.
SECRETS_DIR = Path("/run/secrets")


class Settings(BaseSettings):
    """What both services read: Redis and the bounds they share. Read from the environment (and
    /run/secrets) when created, never at import; each service has its own class below."""

    model_config = SettingsConfigDict(
        frozen=True, secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Each service's own Redis user, and its password: Compose's secret `redis_password`, which
    # each container is given its own of (lesson07.redis_users says what each user may do).
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    # The bounds. A question's record lives a day; each topic keeps its last TOPIC_MAXLEN entries
    # (the gateway admits at most MAX_BACKLOG unanswered questions, far fewer, so trimming only
    # drops handled entries).
    question_ttl_seconds: int = 24 * 3600
    # A student id, its token and its progress lapse after this long without a question (each
    # question sets it again): nothing a student made stays in Redis for ever.
    student_ttl_seconds: int = 30 * 24 * 3600
    topic_maxlen: int = 10000
    struggle_threshold: int = 3  # debug questions on one topic before a struggle alert


class AgentSettings(Settings):
    """The agents' (event_agents.py): delivery, the model, the trace, the dead letters."""

    # `make lesson-07-trace` passes TRACE_ALL empty when it is not set: empty is the default.
    model_config = SettingsConfigDict(env_ignore_empty=True)

    # A pending message idle this long belongs to a consumer presumed dead: a live one claims it.
    # A live consumer renews its claim every third of it while it works (lesson07.claims).
    visibility_timeout_ms: int = 5000
    # Delivered more often than this, a message goes to <topic>.deadletter instead.
    max_deliveries: int = 5
    # How long an event id is remembered as processed: far longer than any redelivery can take
    # (MAX_DELIVERIES visibility timeouts), and as long as the question it is about: after that,
    # an effect on the question is refused anyway (it is no longer pending).
    dedup_ttl_seconds: int = 24 * 3600
    openai_api_key: str | None = None
    model_name: str = "gpt-4o-mini"
    offline_token_delay_ms: int = 20
    model_timeout_seconds: int = 60
    heartbeat_file: str = "/tmp/heartbeat"
    trace_length: int = 10000
    trace_all: bool = False  # `trace` follows the trace from its start, not from now
    deadletter_maxlen: int = 1000  # each dead-letter topic keeps its last DEADLETTER_MAXLEN


class GatewaySettings(Settings):
    """The gateway's (gateway.py): where it listens and what it admits."""

    host: str = "127.0.0.1"
    port: int = 8070
    max_backlog: int = 1000  # unanswered questions at most; beyond, 503
    max_body_bytes: int = 64 * 1024
    asks_per_minute: int = 30  # per student
    enrolments_per_minute: int = 10  # student ids claimed per client address
    allowed_hosts: str = "127.0.0.1,localhost"  # the Host headers the gateway answers
    # The key of the students' token hashes (HMAC-SHA256): without it, a hash in Redis is worth
    # nothing to whoever reads or writes it. Compose's secret `token_key`; no default.
    token_key: SecretStr = Field(min_length=16)


# === Topics, and the events each accepts ===

LEARNING, PROGRESS, ALERTS = "learning.requests", "progress.requests", "struggle.alerts"
SPECIALIST_TOPICS = {
    "concepts": "concept.requests",
    "debug": "debug.requests",
    "exercise": "exercise.requests",
}
TRACE = "trace"  # one entry per delivery and per outcome, for `make lesson-07-trace`
# topic -> the consumer group that reads it (each agent's group is named after its service)
GROUPS = {
    LEARNING: "triage",
    **{t: k for k, t in SPECIALIST_TOPICS.items()},
    PROGRESS: "progress",
}

# topic -> (the one event type it carries, the sources allowed to publish it)
ACCEPTS = {
    LEARNING: ("learning.question.asked", {"/lesson07/gateway"}),
    **{t: ("learning.question.routed", {"/lesson07/triage"}) for t in SPECIALIST_TOPICS.values()},
    PROGRESS: ("learning.question.answered", {f"/lesson07/{k}" for k in SPECIALIST_TOPICS}),
}
STUDENT_ID = r"[A-Za-z0-9_.-]{1,64}"
QUESTION_ID = r"[0-9a-f]{32}"
MAX_ID_CHARS = 128


def deadletter(topic: str) -> str:
    return f"{topic}.deadletter"


def question_key(question_id: str) -> str:
    # hash: student_id, status, route, topic, answer, answered_by, attempts, error
    return f"question:{question_id}"


def asked_key(question_id: str) -> str:
    # hash: student_id (the gateway's), route and topic (triage's). No specialist may write it, so
    # the progress agent checks what a specialist tells it against this, not against question:.
    return f"asked:{question_id}"


def progress_key(student_id: str) -> str:
    # hash: questions, streak, last_day, topic:<t>, kind:<route>, struggle:<t>
    return f"progress:{student_id}"


def student_key(student_id: str) -> str:
    # string: the HMAC of the student's token under TOKEN_KEY (the token itself is never stored)
    return f"student:{student_id}"


async def read_progress(client: redis.Redis, student_id: str, threshold: int = 3) -> dict:
    """The progress agent's state as the gateway shows it (the one place that reads its layout)."""
    raw = await client.hgetall(progress_key(student_id))
    fields = {k: int(v) for k, v in raw.items()}

    def group(prefix: str) -> dict:
        return {k.removeprefix(prefix): v for k, v in fields.items() if k.startswith(prefix)}

    struggles = group("struggle:")
    return {
        "student_id": student_id,
        "questions": fields.get("questions", 0),
        "streak": fields.get("streak", 0),
        "topics": group("topic:"),
        "kinds": group("kind:"),
        "struggles": struggles,
        "alerts": sorted(t for t, n in struggles.items() if n >= threshold),
    }


# The W3C trace context a CloudEvent carries (the distributed-tracing extension), lesson 09.
TRACEPARENT = r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope, the format Dapr wraps every pub/sub message in: the steps'
    model (code/lesson07/step1_topics.py), with the attributes Dapr writes and the extensions we
    read. Strict about what it names (a string is a string, of at most MAX_ID_CHARS); other
    extension attributes pass through."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    source: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    type: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    time: datetime | None = None
    datacontenttype: str | None = None
    data: dict
    traceparent: str | None = Field(default=None, pattern=rf"^{TRACEPARENT}$")
    tracestate: str | None = Field(default=None, max_length=512)


class QuestionData(BaseModel):
    """What every question event carries in `data` (triage and progress add their fields)."""

    model_config = ConfigDict(extra="allow")

    question_id: str = Field(pattern=rf"^{QUESTION_ID}$")
    student_id: str = Field(pattern=rf"^{STUDENT_ID}$")
    text: str


def envelope(event_id: str, source: str, event_type: str, data: dict, **extensions: str) -> dict:
    """A CloudEvents 1.0 envelope, as a dict ready for json.dumps; `extensions` are CloudEvents
    extension attributes, a string each."""
    event = CloudEvent(
        specversion="1.0",
        id=event_id,
        source=source,
        type=event_type,
        time=datetime.now(UTC).replace(microsecond=0),
        datacontenttype="application/json",
        data=data,
        **extensions,
    )
    return event.model_dump(mode="json", exclude_none=True)


class Malformed(ValueError):
    """An event no number of retries can fix: it goes straight to the dead-letter topic."""


def invalid(exc: ValidationError) -> list[str]:
    """The names of the fields a ValidationError found wrong, sorted."""
    return sorted({".".join(str(part) for part in e["loc"][:1]) for e in exc.errors()})


def parse(topic: str, fields: dict) -> dict:
    """The envelope of a stream entry (one field, `data`, as Dapr's Redis component stores it),
    checked by the model and against what `topic` accepts. Anything else raises Malformed, never
    another error."""
    try:
        raw = fields["data"]
        # Read with errors="surrogateescape": bytes that are not UTF-8 arrive as lone surrogates,
        # as do JSON escapes like \ud800. Neither can be stored or sent on: refused here.
        raw.encode("utf-8")
        payload = json.loads(raw)
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        raise Malformed(f"not a JSON CloudEvent in UTF-8: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("specversion") != "1.0":
        raise Malformed("not a CloudEvents 1.0 envelope")
    try:
        event = CloudEvent.model_validate(payload)
    except ValidationError as exc:
        if invalid(exc) == ["traceparent"]:
            raise Malformed(
                "traceparent is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)"
            ) from None
        raise Malformed(f"missing or invalid attributes: {invalid(exc)}") from None
    event_type, sources = ACCEPTS[topic]
    if event.type != event_type or event.source not in sources:
        raise Malformed(f"{topic} accepts {event_type} from {sorted(sources)} only")
    return payload


def event_id_of(fields: dict) -> str:
    """A printable id for the trace, whatever the entry holds."""
    try:
        value = json.loads(fields["data"])["id"]
    except Exception:  # noqa: BLE001 - any malformed entry has no id to show
        return "?"
    return value[:MAX_ID_CHARS] if isinstance(value, str) else "?"


def question_data(event: dict) -> dict:
    """The question an event carries, checked (QuestionData): its `data`, or Malformed."""
    try:
        QuestionData.model_validate(event["data"])
    except ValidationError as exc:
        rules = "; ".join(f"data.{name} must be {QUESTION_RULES[name]}" for name in invalid(exc))
        raise Malformed(rules) from None
    return event["data"]


QUESTION_RULES = {
    "question_id": "32 hex characters",
    "student_id": "1-64 of A-Z a-z 0-9 _ . -",
    "text": "a string",
}


def entry(event: dict) -> dict:
    return {"data": json.dumps(event)}


# === Reaching Redis: by name, with a password, again after any failure ===


def connect(settings: Settings, **options) -> redis.Redis:
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(
        settings.redis_url,
        username=settings.redis_username,
        password=password,
        decode_responses=True,
        encoding_errors="surrogateescape",  # a stray byte is a Malformed event, not a crash
        socket_connect_timeout=3,
        health_check_interval=10,
        **options,
    )
