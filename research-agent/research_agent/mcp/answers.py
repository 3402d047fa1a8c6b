"""An MCP client's check of each tool answer, made once per schema instead of at every call.

The MCP SDK's `ClientSession` checks a tool's structured answer against the output schema the
tool declared, with `jsonschema.validate`, which first checks the schema itself against JSON
Schema's metaschema and builds a validator, at every call: several times the work of checking the
answer. The agent's client (mcp 1.x, which langchain-mcp-adapters requires) keeps its session open
(tools.py), so the schema can be checked once, when a listing brings it, and each answer against
the validator built then. (The SDK's 2.x client, which lesson 08's gateway uses, keeps one compiled
validator per schema itself.)
"""

import jsonschema
import referencing
import referencing.exceptions


def validate_answers_once(session) -> None:
    """Replace the session's answer check with one that checks each schema once, when a listing
    brings it (a new listing, a new check), and each answer against the validator built then:
    the same verdict, and the SDK's own error. Anything else (a tool not listed yet, an answer
    without structured content, a schema that fails its check) takes the SDK's path."""
    sdk_validate = session._validate_tool_result
    validators: dict[str, tuple[dict, object]] = {}  # tool name -> (its schema, a validator)

    async def validate(name: str, result) -> None:
        schema = session._tool_output_schemas.get(name)
        if schema is None or result.structuredContent is None:
            return await sdk_validate(name, result)
        known = validators.get(name)
        if known is None or known[0] is not schema:  # listed again: check the schema again
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError:
                return await sdk_validate(name, result)
            known = validators[name] = (schema, cls(schema, registry=referencing.Registry()))
        try:
            error = jsonschema.exceptions.best_match(known[1].iter_errors(result.structuredContent))
        except referencing.exceptions.Unresolvable:
            return await sdk_validate(name, result)
        if error is not None:
            raise RuntimeError(f"Invalid structured content returned by tool {name}: {error}")

    session._validate_tool_result = validate
