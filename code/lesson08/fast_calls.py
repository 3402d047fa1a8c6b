"""Lesson 08, going further: a tool call the gateway has nothing left to decide about, sent
straight to its server.

Through the full path a `tools/call` crosses two MCP stacks inside the gateway: FastMCP's server
(the SDK's transport, a session made for the request, the middleware) and FastMCP's client to the
tool server. Most of a call's cost is there, not in the gateway's rules. FastCalls, an ASGI layer
after the Origin and Host checks and the burst guard, answers a call itself when every rule can be
applied without them, and applies the same rules:

- the caller is named by its token, the tool is on its allow-list and not refused by its pins,
  and the tool is pinned on its server's kept session by a check younger than
  GATEWAY_PIN_RECHECK_SECONDS (PinnedProxyProvider.fresh: the same window as the full path);
- only what call_limits.passed_on lets through of the caller's `_meta` goes on, without the keys
  that describe the caller's connection; the request to the tool server is stamped by the kept
  session itself (its protocol version, client info and capabilities, its `Mcp-*` headers);
- CallPolicy's time limit and calls per client, the result cap (the kept transport's, then
  CallPolicy's), the output schema (checked by the kept session, as its own calls are), and
  CallPolicy's log line and metrics.

Everything else takes the full path, which answers it as before: another method, a malformed or
oversized request, an unknown protocol version, a refused or unknown tool or client, a check that
is due or running, a server not started yet or not of the 2026-07-28 revision, and any
`Mcp-Param-*` header or a tool that declares one. A test sends the same calls both ways and
compares the answers (tests/lesson_08/test_fast_calls.py). GATEWAY_FAST_CALLS=false turns it off;
the traced gateway (lesson 09) does not use it, since its spans are FastMCP's.
"""

import asyncio
import itertools
import time
import uuid

import anyio
import fastjsonschema
import httpx2
import orjson
from mcp.shared.inbound import InboundModernRoute, classify_inbound_request
from mcp_types import SERVER_INFO_META_KEY, CallToolResult
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from lesson08.call_limits import CONNECTION_META, allowed, cut, identify, passed_on
from lesson08.upstream import TOO_LARGE

MAX_BODY = 256 * 1024  # a larger request takes the full path, read as it arrives
JSON = "application/json"
NEXT_ID = itertools.count(1)  # the ids of the gateway's own requests to tool servers


class FastCalls:
    """ASGI middleware for POST `path`: a `tools/call` answered here when it may be (see the
    module's docstring), anything else passed on to the SDK's app untouched."""

    def __init__(self, app, *, policy, providers: dict, server, path: str = "/mcp"):
        self.app, self.policy, self.path = app, policy, path
        self.server = server  # the SDK's server: whose info a 2026-07-28 answer carries
        # Each catalog tool belongs to one server (lesson08.catalog): its provider.
        self.owner = {tool: p for p in providers.values() for tool in p.provides}
        self.declared: dict[str, Declared] = {}  # per tool: what its pinned declaration allows

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more and len(body) <= MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":
                return  # the caller left: nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
        call = None if more else self.plan(scope, body)
        try:
            if call is None:
                raise NotSent
            answer = orjson.dumps(await self.run(*call))
        except NotSent:
            return await self.app(scope, replay(body, more, receive), send)
        headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    def plan(self, scope, body: bytes):
        """What run needs for a call the fast path may answer, else None."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        accept = headers.get("accept", "")
        if (
            len(headers) != len(scope["headers"])  # a header sent twice: the full path reads it
            or not headers.get("content-type", "").startswith(JSON)
            or JSON not in accept
            or "text/event-stream" not in accept
            or any(name.startswith("mcp-param-") for name in headers)
        ):
            return None
        try:
            message = orjson.loads(body)
        except ValueError:  # not JSON, or a number orjson does not take: the SDK's to answer
            return None
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            return None
        request_id, params = message.get("id"), message.get("params")
        if (
            message.get("jsonrpc") != "2.0"
            or isinstance(request_id, bool)
            or not isinstance(request_id, int | str)
            or not isinstance(params, dict)
            or not isinstance(params.get("name"), str)
            or not isinstance(params.get("arguments", {}), dict)
            or not isinstance(params.get("_meta", {}), dict)
            or set(params) - {"name", "arguments", "_meta"}
        ):
            return None
        version = headers.get("mcp-protocol-version")
        if version in MODERN_PROTOCOL_VERSIONS:
            if not isinstance(
                classify_inbound_request(message, headers=headers), InboundModernRoute
            ):
                return None
        elif version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        tool, policy = params["name"], self.policy
        client = identify(policy.clients, headers.get("authorization"))
        provider = self.owner.get(tool)
        if (
            provider is None
            or not allowed(policy.clients, client, tool)
            or tool in policy.pins.refused
        ):
            return None
        upstream = provider.upstream
        kept = upstream.kept() if upstream is not None else None
        if (
            not provider.fresh(tool, kept)  # (False without a kept session)
            or upstream.http is None
            or kept.protocol_version not in MODERN_PROTOCOL_VERSIONS
        ):
            return None
        declared = self._declared(tool, provider.pinned[tool])
        if declared.headers:
            return None
        known = client != "anonymous"
        meta = {
            key: value
            for key, value in (params.get("_meta") or {}).items()
            if passed_on(key, known) and key not in CONNECTION_META
        }
        request = cut(headers.get("x-request-id") or uuid.uuid4().hex[:16])
        return (
            request_id,
            version,
            client,
            tool,
            params.get("arguments") or {},
            meta,
            request,
            upstream,
            kept,
            declared,
        )

    def _declared(self, tool: str, declaration) -> "Declared":
        """What the fast path needs of a pinned declaration, worked out once per declaration (a
        check that finds the same tool keeps the one it had; one entry per catalog tool)."""
        known = self.declared.get(tool)
        if known is None or known.declaration is not declaration:
            known = self.declared[tool] = Declared(declaration)
        return known

    async def run(
        self, request_id, version, client, tool, arguments, meta, request, upstream, kept, declared
    ) -> dict:
        """Make the call on the server's kept connection; the JSON-RPC answer to the caller.
        NotSent when the server could not be reached: the call never left, and the full path
        takes it (its server started again if it stopped)."""
        policy, started, outcome = self.policy, time.monotonic(), "ok"
        kept.uses += 1  # a call is running on it: the idle sweep leaves it open
        upstream.launcher.touch(upstream.entry)
        try:
            # asyncio's own timeout, and the slot taken without a checkpoint when one is free:
            # anyio's fail_after and `async with` cost 40 and 17 us, a tenth of the path's own work.
            async with asyncio.timeout(policy.timeout):  # a wait for a slot counts too
                slot = policy.running[client]  # the full path's: one count of calls per client
                try:
                    slot.acquire_nowait()
                except anyio.WouldBlock:
                    await slot.acquire()
                try:
                    answer = await forward(upstream, kept.session, tool, arguments, meta)
                finally:
                    slot.release()
            if "error" in answer:
                message = str(answer["error"].get("message", ""))
                outcome = "too_large" if TOO_LARGE in message else "tool_error"
                result = failed(policy.too_large_message(tool) if TOO_LARGE in message else message)
            else:
                result = answer["result"]
                size = len(orjson.dumps([result.get("content"), result.get("structuredContent")]))
                if size > policy.max_result_bytes:
                    outcome, result = "too_large", failed(policy.too_large_message(tool, size))
                elif not result.get("isError") and not declared.passes(result):
                    try:  # the kept session's own check decides, and says why
                        await kept.session.validate_tool_result(tool, checked(result))
                    except RuntimeError as exc:
                        outcome = "tool_error"
                        result = failed(f"Error calling tool {tool!r}: {exc}")
        except TimeoutError:
            outcome, result = "timeout", failed(policy.timeout_message(tool))
        except httpx2.ConnectError:
            outcome = None  # nothing was sent: no call to record
            await upstream.reset(kept)  # its server is gone: the full path opens a new session
            raise NotSent from None
        except (httpx2.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            outcome = "tool_error"
            result = failed(f"Error calling tool {tool!r}: {type(exc).__name__}")
        finally:
            kept.uses -= 1
            if outcome is not None:
                policy.record(client, tool, request, arguments, started, outcome, "direct")
        if version in MODERN_PROTOCOL_VERSIONS:  # stamped as the SDK's server stamps its own
            result.setdefault("resultType", "complete")
            meta = result.get("_meta")
            if meta is None or isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
                stamp = self.server.server_info_stamp
                result["_meta"] = {**(meta or {}), SERVER_INFO_META_KEY: stamp}
        else:
            result.pop("resultType", None)  # the handshake era has no such field
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


# The keywords fastjsonschema (draft 7) checks as the SDK's jsonschema (2020-12) does; a schema
# with any other (`dependencies`, `additionalItems`, `prefixItems`, `unevaluated*`, ...), an
# `items` list, or a `$ref` beside other keywords (draft 7 ignores them) is checked by the kept
# session alone.
ALIKE = frozenset(
    ["$schema", "$id", "$ref", "$comment", "$defs", "definitions", "title", "description"]
    + ["default", "examples", "readOnly", "writeOnly", "deprecated", "type", "enum", "const"]
    + ["multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength"]
    + ["minLength", "pattern", "format", "items", "maxItems", "minItems", "uniqueItems"]
    + ["contains", "maxProperties", "minProperties", "required", "properties"]
    + ["patternProperties", "additionalProperties", "propertyNames", "if", "then", "else"]
    + ["allOf", "anyOf", "oneOf", "not"]
)
NAMES = ("properties", "patternProperties", "definitions", "$defs")  # their keys are names


def alike(schema) -> bool:
    """Whether fastjsonschema checks `schema` as the SDK's jsonschema does (see ALIKE)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not set(schema) <= ALIKE:
        return False
    if "$ref" in schema and set(schema) - {"$ref", "title", "description", "$comment"}:
        return False
    if isinstance(schema.get("items"), list):
        return False
    for key, value in schema.items():
        if key in NAMES:
            if not isinstance(value, dict) or not all(alike(sub) for sub in value.values()):
                return False
        elif key in ("allOf", "anyOf", "oneOf"):
            if not isinstance(value, list) or not all(alike(sub) for sub in value):
                return False
        elif key in ("items", "additionalProperties", "propertyNames", "contains", "not"):
            if not alike(value):
                return False
        elif key in ("if", "then", "else") and not alike(value):
            return False
    return True


class Declared:
    """A pinned tool's declaration, as the fast path uses it:

    - `headers`: its input schema names an `x-mcp-header` (an argument mirrored in an
      `Mcp-Param-*` header, which the full path checks and sends): the fast path leaves it alone;
    - `passes(result)`: its output schema, compiled by fastjsonschema (20 times the speed of the
      SDK's jsonschema here). A result it passes is valid; any other (or every result, for a
      schema fastjsonschema does not check alike) goes to the kept session's own check, which
      decides and words the error as the full path does."""

    def __init__(self, declaration):
        self.declaration = declaration
        self.headers = "x-mcp-header" in orjson.dumps(declaration.input_schema).decode()
        schema, self.check = declaration.output_schema, None
        if schema is not None and alike(schema):
            try:
                self.check = fastjsonschema.compile(schema)
            except Exception:  # a schema it cannot compile: the kept session's check only
                self.check = None
        self.schema = schema

    def passes(self, result: dict) -> bool:
        if self.schema is None:
            return True  # nothing to check against (the kept session would check nothing)
        if self.check is None or "structuredContent" not in result:
            return False
        try:
            self.check(result["structuredContent"])
        except fastjsonschema.JsonSchemaException:
            return False
        return True


class NotSent(Exception):
    """The full path takes this request: the fast path may not, or its call never left."""


def failed(message: str) -> dict:
    """A tool error, as the full path answers one."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def checked(result: dict) -> CallToolResult:
    """What validate_tool_result reads of a result: its structured content, or that it has none."""
    if "structuredContent" in result:
        return CallToolResult.model_construct(structured_content=result["structuredContent"])
    return CallToolResult.model_construct()


async def forward(upstream, session, tool: str, arguments: dict, meta: dict) -> dict:
    """One `tools/call` on the server's kept connection, stamped by its kept session (protocol
    version, client info, capabilities, `Mcp-*` headers) as that session stamps its own calls:
    the server's JSON-RPC answer (a JSON body, or the answer's event in an SSE stream)."""
    params = {"name": tool, "arguments": arguments, **({"_meta": meta} if meta else {})}
    data = {"jsonrpc": "2.0", "id": next(NEXT_ID), "method": "tools/call", "params": params}
    options: dict = {}
    session._stamp(data, options)
    headers = {"accept": f"{JSON}, text/event-stream", "content-type": JSON, **options["headers"]}
    response = await upstream.http.post(upstream.url, content=orjson.dumps(data), headers=headers)
    if response.status_code != 200:
        raise ValueError(f"the tool server answered HTTP {response.status_code}")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return answer_in_stream(response.text, data["id"])
    answer = orjson.loads(response.content)
    if answer.get("id") != data["id"]:
        raise ValueError("the tool server's answer is not to this call")
    return answer


def answer_in_stream(text: str, request_id: int) -> dict:
    """The JSON-RPC answer to `request_id` among an SSE stream's events (the others, such as
    progress or log notifications, are for a caller that streams: this one answers in JSON)."""
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        )
        if data:
            message = orjson.loads(data)
            if isinstance(message, dict) and message.get("id") == request_id:
                return message
    raise ValueError("the tool server's stream ended without an answer")


def replay(body: bytes, more: bool, receive):
    """The request's body as the app would have received it: what was read, then the rest."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return again
