"""The catalog lesson 08's gateway is tested with: the notes server and the hostile one behind it,
for the course's three clients. Standard library only: lesson 08's own environment
(tests/lesson_08/gateway_env/) imports it too."""

# What the hostile server declares (tests/support/mcp_hostile_server.py): the catalog gives each
# server its own tools, and the gateway serves no other from it.
HOSTILE_TOOLS = ["hang", "flood", "slow", "lookup", "helpful", "leak", "bomb"]


def gateway_catalog(notes, hostile) -> dict:
    """Both servers (each running: its `url`) behind the gateway. The anonymous client and the
    agent may call search_notes, the tester every tool; the gateway reads the agent's and the
    tester's tokens from its environment, TOKEN_AGENT and TOKEN_TESTER."""
    return {
        "servers": [
            {"name": "notes", "url": notes.url + "/mcp", "tools": ["search_notes"]},
            {"name": "hostile", "url": hostile.url + "/mcp", "tools": HOSTILE_TOOLS},
        ],
        "clients": {
            "anonymous": {"tools": ["search_notes"]},
            "agent": {"token_env": "TOKEN_AGENT", "tools": ["search_notes"]},
            "tester": {"token_env": "TOKEN_TESTER", "tools": ["*"]},
        },
    }
