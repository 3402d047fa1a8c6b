"""Who may name the caller: uvicorn's proxy options for FORWARDED_ALLOW_IPS, one owner for every
service that counts callers by address (the research agent, lesson 04's sandbox API)."""


def uvicorn_forwarding(allow_ips: str | None) -> dict:
    """`uvicorn.run` options that believe X-Forwarded-For only from `allow_ips` (addresses or
    CIDRs, comma-separated). Empty believes nobody: uvicorn's default believes 127.0.0.1, so any
    caller on the same host could name a new address for each request, and with it a fresh share
    of every per-client limit."""
    return {"proxy_headers": bool(allow_ips), "forwarded_allow_ips": allow_ips or ""}
