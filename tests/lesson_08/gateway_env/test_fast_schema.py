"""The fast path's output-schema check (code/lesson08/fast_calls.py, Declared): fastjsonschema
passes only what the SDK's jsonschema would pass, and any result it does not pass, or any schema
it would read otherwise, goes to the kept session's own check."""

from types import SimpleNamespace

import pytest
from jsonschema import Draft202012Validator

from lesson08.fast_calls import Declared, alike

FOUND = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "sources": {"type": "array", "items": {"$ref": "#/$defs/Source"}},
    },
    "required": ["text", "sources"],
    "$defs": {
        "Source": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "url": {"type": "string"}},
            "required": ["title", "url"],
        }
    },
}


def declared(output_schema, input_schema=None) -> Declared:
    tool = SimpleNamespace(
        input_schema=input_schema or {"type": "object"}, output_schema=output_schema
    )
    return Declared(tool)


@pytest.mark.parametrize(
    "value",
    [
        {"text": "t", "sources": [{"title": "a", "url": "u"}]},
        {"text": "t", "sources": [{"title": "a"}]},  # a source without its url
        {"text": 1, "sources": []},
        {"sources": []},
        {"text": "t", "sources": "none"},
    ],
)
def test_a_result_passes_only_if_the_sdks_check_passes_it(value):
    fast = declared(FOUND).passes({"structuredContent": value})
    assert fast == Draft202012Validator(FOUND).is_valid(value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "dependencies": {"a": ["b"]}},  # not a 2020-12 keyword
        {"type": "array", "items": [{"type": "string"}]},  # a tuple in draft 7 only
        {"$ref": "#/$defs/x", "required": ["a"], "$defs": {"x": {}}},  # draft 7 ignores `required`
        {"type": "array", "prefixItems": [{"type": "string"}]},  # 2020-12 only
        {"properties": {"a": {"unevaluatedProperties": False}}},  # deeper down
    ],
)
def test_a_schema_read_otherwise_is_left_to_the_kept_session(schema):
    assert not alike(schema)
    # Every result goes to the kept session's check, which decides.
    assert declared(schema).passes({"structuredContent": {}}) is False


def test_no_output_schema_checks_nothing_and_missing_content_goes_to_the_sdk():
    assert declared(None).passes({"content": []})
    assert not declared(FOUND).passes({"content": []})  # the SDK's error: no structured content


def test_a_tool_that_mirrors_an_argument_in_a_header_is_the_full_paths():
    schema = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "R"}}}
    assert declared(FOUND, schema).headers
    assert not declared(FOUND).headers
