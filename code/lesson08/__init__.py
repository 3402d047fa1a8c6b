"""Lesson 08's modules, imported by its numbered scripts: the gateway
(code/lesson08/mcp_gateway.py),
the tool servers (code/lesson08/notes_server.py, code/lesson08/python_server.py) and the Docker
guard (code/lesson08/docker_guard.py), which Compose runs in front of each caller that needs Docker:

catalog.py             which tool servers exist, how each runs, which client may call what
launcher.py            tool servers started on demand, limited, and stopped when idle
call_limits.py         who is calling, allow-lists, timeouts, result caps, the call log and metrics
pinning.py             a hash of each tool's declaration, so a changed tool is refused
operator_endpoints.py  the operator's /pins, re-pinning and /metrics
transport.py           where a server listens, which Origin and Host it answers
guard_policy.py        what the Docker guard lets through for each caller, and nothing else
tracing.py             lesson 09's spans for the gateway and the tool servers, attached from outside
"""
