"""Lesson 07, going further: who may do what in Redis (docs/07, "Bounds and access").

Each service reaches Redis as a user of its own, allowed the commands its work needs on the keys it
reads or writes, and nothing else: no FLUSHALL, CONFIG, ACL, KEYS or DEBUG, and no other service's
keys. A topic is written by the one service that publishes it, so Redis, not the publisher, vouches
for an event's source. `default` is off. Each service has a password of its own, a file of the
secrets folder that only its container is given; Redis holds their SHA-256s (users.acl). The
gateway's key for students' token hashes (token-key) is there too.

The folder is made with umask 077: it is yours alone (0700), so no other user of the machine reads a
password in it. The files in it are readable (0644) so that the containers' users, which are not
you, can read the one each is given through its bind mount.

    python code/lesson07/redis_users.py FOLDER    the passwords and the key (made once), users.acl

Only the standard library: `make lesson-07` runs it with any Python 3.
"""

import hashlib
import os
import secrets
import sys
from pathlib import Path

# lesson07.contract's topics (a test keeps them equal: this file runs without the packages).
LEARNING, PROGRESS, ALERTS = "learning.requests", "progress.requests", "struggle.alerts"
TRACE = "trace"
SPECIALISTS = {"concepts": "concept.requests", "debug": "debug.requests"}
SPECIALISTS["exercise"] = "exercise.requests"
# A client's first words: redis-py's HELLO (its CLIENT SETINFO, which Redis 7.0 lacks, may be
# refused: redis-py goes on without it), its health check's PING, and who it is.
CONNECTION = ["+ping", "+hello", "+acl|whoami"]
SCRIPTS = ["+evalsha", "+eval", "+script|load"]
# Its effects (scripts of EXISTS, HGET, HSET, XADD, SET) and its dead letters (MULTI, XADD, XACK).
# A key a script is given (KEYS) must be readable and writable by its caller: write-only patterns
# (%W~) serve what the scripts reach through their arguments, and the commands sent alone.
EFFECTS = ["+xadd", "+multi", "+exec", "+exists", "+set", "+hget", "+hset"]
# What an agent does on its own topic, and only there: join its group, read, claim, renew a claim,
# ack. A selector (its own key and commands, in brackets): reading a stream through a group writes
# to it, and without it the agent's XADD would reach its own topic too, as another publisher.
CONSUMING = ["+xgroup|create", "+xreadgroup", "+xack", "+xautoclaim", "+xpending", "+xclaim"]


def agent(topic: str, group: str, *keys: str) -> list[str]:
    """An agent's rules: its topic (read and ack only), its dead letters and the trace (write
    only), its own processed records, and `keys`."""
    own = [f"%W~{topic}.deadletter", f"~processed:{group}:*", f"%W~{TRACE}"]
    consuming = "(" + " ".join([f"~{topic}", *SCRIPTS, *CONSUMING]) + ")"
    return [*CONNECTION, *SCRIPTS, *EFFECTS, *own, *keys, consuming]


RULES = {
    # Students' ids and questions; it publishes the questions, and reads the topics' lengths and
    # groups (admission, /metrics), the progress, the trace; its rate windows (the limits library's
    # scripts: LINDEX, LPUSH, LTRIM, EXPIRE).
    "gateway": [
        *CONNECTION,
        *SCRIPTS,
        *["+get", "+set", "+exists", "+expire", "+hset", "+hget", "+hgetall", "+hdel", "+xadd"],
        "+xlen",
        *["+xinfo|groups", "+xread", "+xrange", "+lindex", "+lpush", "+ltrim"],
        *["~student:*", "~question:*", "~asked:*", f"~{LEARNING}", "%R~*.requests"],
        "%R~*.deadletter",
        *["~lesson07:asks*", "%R~progress:*", f"%R~{TRACE}"],
    ],
    "triage": agent(
        LEARNING, "triage", "~question:*", "%W~asked:*", *(f"%W~{t}" for t in SPECIALISTS.values())
    ),
    **{
        kind: agent(topic, kind, "~question:*", f"%W~{PROGRESS}")
        for kind, topic in SPECIALISTS.items()
    },
    # It reads what the gateway and triage recorded of a question (asked:), which no specialist
    # may write, to check what a specialist tells it.
    "progress": agent(
        PROGRESS,
        "progress",
        "+hincrby",
        "+expire",
        "+hmget",
        "~progress:*",
        f"~{ALERTS}",
        "%R~asked:*",
    ),
    # Redis's own health check: PING, nothing else.
    "health": ["+ping"],
    # You, from the host (`docker compose exec redis redis-cli --user operator`): everything.
    # Its password is in no container.
    "operator": ["~*", "&*", "+@all"],
}
# Nobody can log in as `default`, but Redis replays its AOF as `default`: it keeps every right.
DEFAULT = "user default off resetpass ~* &* +@all"


def password(folder: Path, name: str) -> str:
    """The password in FOLDER/name, made the first time (a file nobody but you can reach)."""
    path = folder / name
    if not path.exists():
        path.write_text(secrets.token_hex(24))
    path.chmod(0o644)  # the folder keeps it yours; the container's user must read its own
    return path.read_text().strip()


def acl(folder: Path) -> str:
    """users.acl: every user with its rules and its password's SHA-256."""
    lines = [DEFAULT]
    for name, rules in RULES.items():
        digest = hashlib.sha256(password(folder, name).encode()).hexdigest()
        lines.append(" ".join(["user", name, "on", "resetchannels", f"#{digest}", *rules]))
    return "\n".join(lines) + "\n"


def make(folder: Path) -> None:
    os.umask(0o077)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    password(folder, "token-key")
    (folder / "users.acl").write_text(acl(folder))
    (folder / "users.acl").chmod(0o644)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    make(Path(sys.argv[1]))
