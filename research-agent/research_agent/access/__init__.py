"""Who may call and how much (lesson 02): API keys and the caller they name (keys.py), rate limits,
token budgets and stream caps (quotas.py, each limit a module of limits/), each run's tokens counted
and charged (usage.py), the key checked before the body is read (key_before_body.py), the proxies
that may name the client (forwarded.py)."""
