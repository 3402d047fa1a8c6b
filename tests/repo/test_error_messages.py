"""One error type, one message: every `internal_error` the course sends says
research_agent/web/error_shape.py's INTERNAL_ERROR_MESSAGE, whether a file builds the body by hand
(a dict with "type": "internal_error") or through a helper (a call whose arguments include
"internal_error"). A message written out as a string next to that type is a second text, and fails
here."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("code/*.py"), *ROOT.glob("research-agent/research_agent/**/*.py")])
OWNER = "INTERNAL_ERROR_MESSAGE"


def literal_messages(source: str) -> list[str]:
    """The string literals written as the message of an internal_error."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            fields = {
                k.value: v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant)
            }
            kind, message = fields.get("type"), fields.get("message")
            is_internal = isinstance(kind, ast.Constant) and kind.value == "internal_error"
            if is_internal and isinstance(message, ast.Constant):
                found.append(message.value)
        elif isinstance(node, ast.Call):
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if "internal_error" in args:
                after = args[args.index("internal_error") + 1 :]
                found += [a for a in after if isinstance(a, str)]
    return found


def test_the_scan_finds_a_second_message_written_out():
    assert literal_messages('e = {"type": "internal_error", "message": "it broke"}') == ["it broke"]
    assert literal_messages('error_response(500, "internal_error", "oops")') == ["oops"]
    assert (
        literal_messages('e = {"type": "internal_error", "message": INTERNAL_ERROR_MESSAGE}') == []
    )
    assert literal_messages('error_body("internal_error", INTERNAL_ERROR_MESSAGE)') == []


def test_every_internal_error_says_the_owners_message():
    assert len(SOURCES) > 20
    second = {
        path.relative_to(ROOT).as_posix(): found
        for path in SOURCES
        if (found := literal_messages(path.read_text(encoding="utf-8")))
    }
    assert second == {}, (
        f"use {OWNER} from research_agent/web/error_shape.py (or the lesson's copy of it)"
    )


def test_copies_of_the_message_say_the_same():
    from research_agent.web.error_shape import INTERNAL_ERROR_MESSAGE

    copies = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == OWNER for t in node.targets
            )
            if named and isinstance(node.value, ast.Constant):
                copies[path.relative_to(ROOT).as_posix()] = node.value.value
    assert "research-agent/research_agent/web/error_shape.py" in copies
    assert set(copies.values()) == {INTERNAL_ERROR_MESSAGE}
