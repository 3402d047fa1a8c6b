"""The research agent's Agent Card: what another team's agent reads before it calls ours.

Served at /.well-known/agent-card.json by the SDK's route: its skill with examples, the two
bindings it serves (JSON-RPC and HTTP+JSON), streaming, and from step 4 on how to authenticate.
"""

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)

BINDINGS = {"JSONRPC": "/a2a/jsonrpc", "HTTP+JSON": "/a2a/rest"}  # JSON-RPC, and REST

SKILL = AgentSkill(
    id="research",
    name="Research the course's notes",
    description="Answers a question about containerizing AI agents from the course's notes, "
    "with its sources as data. Arithmetic is computed by a Python program, after the caller "
    "approves it (the task asks for input).",
    tags=["research", "docker", "agents"],
    examples=["Why use a multi-stage Docker build?", "What is 2**100?"],
)


def make_card(url: str, bearer: bool = False) -> AgentCard:
    """The card for an agent reached at `url`; with `bearer`, it says a token is needed."""
    card = AgentCard(
        name="Research agent",
        description="The course's research agent: it searches its notes and answers with sources.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(protocol_binding=binding, url=url + path, protocol_version="1.0")
            for binding, path in BINDINGS.items()
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        skills=[SKILL],
    )
    if bearer:  # how to call (a bearer token), never which token
        card.security_schemes["bearer"].CopyFrom(
            SecurityScheme(http_auth_security_scheme={"scheme": "Bearer"})
        )
        card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList()}))
    return card
