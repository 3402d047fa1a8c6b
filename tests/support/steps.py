"""A stepped lesson's files compared: a step's code lines, and what the next step takes away from
the one before it and adds (each lesson's test_steps.py bounds both)."""

import ast
import difflib


def code_lines(text: str) -> list[str]:
    """A step's lines after its docstring (it describes the step, so it changes), without blank
    lines."""
    lines = text.splitlines()
    return [line for line in lines[ast.parse(text).body[0].end_lineno :] if line.strip()]


def removed_and_added(old: str, new: str) -> tuple[list[str], list[str]]:
    """The code lines the newer step takes away from the older one, and the lines it adds."""
    diff = list(difflib.unified_diff(code_lines(old), code_lines(new), lineterm="", n=0))
    removed = [line for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line for line in diff if line.startswith("+") and not line.startswith("+++")]
    return removed, added
