"""Squid's helpers for the egress proxy: small programs Squid starts and talks to over stdin/stdout,
one request per line (https://wiki.squid-cache.org/Features/AddonHelpers). Squid does the proxying;
these only answer its questions.

  helpers.py auth      basic auth: is "RUN PASSWORD" a run's credentials? (PASSWORD is an HMAC of
                       RUN under EGRESS_RUN_KEY, so the runner needs no call to the proxy)
  helpers.py sni       is the TLS server name the CONNECT's host? ("HOST SNI")
  helpers.py bytes     has the run used less than SANDBOX_MAX_BYTES? ("RUN")
  helpers.py requests  has the run made fewer than SANDBOX_MAX_REQUESTS requests? ("RUN")
  helpers.py usage     the log daemon behind `access_log daemon:`: adds each finished
                       transaction's bytes to its run's total, prints its decision line

A run's totals live in /run/egress/runs/RUN.bytes and RUN.requests. Their one writer is the usage
daemon (Squid runs one), so a rename is the only lock needed.
"""

import hashlib
import hmac
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote

RUNS = Path(os.environ.get("EGRESS_STATE", "/run/egress")) / "runs"
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CAPS = {"bytes": "SANDBOX_MAX_BYTES", "requests": "SANDBOX_MAX_REQUESTS"}


def run_password(key: str, run: str) -> str:
    """The password of run RUN: what the runner computes too (see the entrypoint's docstring)."""
    return hmac.new(key.encode(), run.encode(), hashlib.sha256).hexdigest()[:32]


def read_total(run: str, kind: str) -> int:
    try:
        return int((RUNS / f"{run}.{kind}").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def write_total(run: str, kind: str, value: int) -> None:
    tmp = RUNS / f".{run}.{kind}.tmp"
    tmp.write_text(str(value))
    tmp.replace(RUNS / f"{run}.{kind}")


def answer(line: str, mode: str) -> str:
    fields = [unquote(field) for field in line.split()]
    if mode == "auth":
        key = os.environ["EGRESS_RUN_KEY"]
        valid = len(fields) == 2 and RUN_ID.fullmatch(fields[0])
        return (
            "OK"
            if valid and hmac.compare_digest(fields[1], run_password(key, fields[0]))
            else "ERR"
        )
    if mode == "sni":
        host, sni = (fields + ["-", "-"])[:2]
        same = sni not in ("", "-") and host.lower().rstrip(".") == sni.lower().rstrip(".")
        return "OK" if same else "ERR"
    run = fields[0] if fields and RUN_ID.fullmatch(fields[0]) else None
    if run is None:
        return "ERR"
    if mode in CAPS:
        return "OK" if read_total(run, mode) < int(os.environ[CAPS[mode]]) else "ERR"
    raise SystemExit(f"unknown mode {mode}")


def usage_daemon() -> None:
    """Squid's log daemon: each 'L' line is one finished transaction in squid.conf's `egress`
    format. Charge its bytes to its run, print the decision line on the container's stdout (Squid's
    own, PID 1's: the daemon's stdout is a pipe back to Squid). Other commands (rotate, flush)
    need nothing here."""
    with open("/proc/1/fd/1", "w", buffering=1) as out:
        for line in sys.stdin:
            decision_line = charge(line)
            if decision_line:
                out.write(decision_line + "\n")


def charge(line: str) -> str | None:
    """Charge one log daemon command's transaction to its run; return the line to print, if any."""
    if not line.startswith("L"):
        return None
    fields = line[1:].split()
    if len(fields) != 11:
        return f"egress log: unexpected line {line!r}"
    run, decision, reason, method, host, sni, tls, status, sent, received, squid = fields
    sent, received = (int(n) if n.isdigit() else 0 for n in (sent, received))
    if reason == "no-run-credentials" or not RUN_ID.fullmatch(run):
        run = "-"  # a name that did not authenticate is no run's: nothing is charged to it
    if run != "-":
        write_total(run, "bytes", read_total(run, "bytes") + sent + received)
    if squid == "NONE_NONE" and tls == "splice":
        return None  # the tunnel's own line follows when it closes, with its bytes
    # A request: one over plain HTTP, one spliced tunnel, one inside a decrypted tunnel.
    if run != "-" and decision == "allowed" and not (method == "CONNECT" and tls == "bump"):
        write_total(run, "requests", read_total(run, "requests") + 1)
    if decision == "-":  # no access check ran: a request inside a refused CONNECT (its 403), or
        decision = "refused"  # a connection closed before any request
        reason = "inside-refused-connect" if method != "-" else "no-request"
    words = [f"egress {decision} run={run} host={host} method={method} reason={reason}"]
    if tls != "-":
        words.append(f"sni={sni} tls={tls}")
    if squid != "TCP_TUNNEL":  # a tunnel's "status" is how it ended, not an HTTP answer
        words.append(f"status={status}")
    words.append(f"sent={sent} received={received}")
    return " ".join(words)


def main() -> None:
    mode = sys.argv[1]
    RUNS.mkdir(parents=True, exist_ok=True)
    if mode == "usage":
        usage_daemon()
        return
    for line in sys.stdin:
        print(answer(line.strip(), mode), flush=True)


if __name__ == "__main__":
    main()
