"""Lesson 01, the production version: a bound on how deeply a JSON value may nest.

A context nested a thousand levels deep parses, then makes json.dumps (the cache key, the prompt)
recurse past Python's limit: a 500. Checked while validating, it is a 422 instead.
"""

from typing import Any


def limit_nesting(value: dict[str, Any] | None, max_depth: int) -> dict[str, Any] | None:
    """`value` unchanged, or ValueError (a 422 in a pydantic validator) if nested too deep.
    Level by level, without recursion, so the check itself cannot overflow the stack."""
    level, depth = ([value] if value else []), 0
    while level:
        depth += 1
        if depth > max_depth:
            raise ValueError(f"context is nested more than {max_depth} levels deep")
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return value
