"""What a doc shows a script printing, and whether a run printed it.

A script step's command is a shell block of its own, and the block right after it shows what it
prints: the test that a `<!-- checked-by: tests/... -->` mark names runs the same command and
compares, with the docs' own rule (tests/repo/test_docs.py): a line `...` stands for any number of
lines, and `...` inside a line for any characters.
"""

import re
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)


def shown_output(doc: Path, command: str) -> str:
    """The body of the text block that follows the shell block holding `command` alone."""
    fences = list(FENCE.finditer(doc.read_text(encoding="utf-8")))
    for block, after in zip(fences, fences[1:], strict=False):
        if block[1] == "bash" and block[2].strip() == command and after[1] == "text":
            return after[2]
    raise LookupError(f"{doc.name} shows no `{command}` followed by its output")


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").strip("\n").split("\n")]


def _line(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def printed_as_shown(shown: str, printed: str) -> bool:
    """Whether `printed` is what `shown` shows, `...` standing for what varies."""
    expected, actual = _lines(shown), _lines(printed)
    # matches[i][j]: expected[i:] matches actual[j:]
    matches = [[False] * (len(actual) + 1) for _ in range(len(expected) + 1)]
    matches[len(expected)][len(actual)] = True
    for i in range(len(expected) - 1, -1, -1):
        for j in range(len(actual), -1, -1):
            if expected[i] == "...":
                matches[i][j] = matches[i + 1][j] or (j < len(actual) and matches[i][j + 1])
            else:
                matches[i][j] = (
                    j < len(actual) and _line(expected[i], actual[j]) and matches[i + 1][j + 1]
                )
    return matches[0][0]
