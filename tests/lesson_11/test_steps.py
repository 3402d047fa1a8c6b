"""docs/11-evals.md's commands, run as the page shows them: each `make lesson-11 STEP=K` and
`make evals` prints the output the page shows below it (line by line, `...` standing for any lines
or characters). And step 4, where the steps arrive, judges the cases it shares with `make evals`
(lesson11) alike: the same verdict, pass or fail, for each case and evaluator both have."""

import re
import subprocess

import pytest

from support.lessons import ROOT

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "11-evals.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def documented() -> list[tuple[str, str]]:
    """(command, expected output): each bash block of the page that runs `make lesson-11 ...` or
    `make evals`, and the text block right after it."""
    blocks = [(m[1], m[2].strip("\n")) for m in FENCE.finditer(DOC.read_text(encoding="utf-8"))]
    pairs = []
    for (lang, body), (next_lang, output) in zip(blocks, blocks[1:], strict=False):
        if lang == "bash" and re.fullmatch(r"make (lesson-11 STEP=\d|evals)", body):
            assert next_lang == "text", f"{body}: no output block after it"
            pairs.append((body, output))
    return pairs


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; a line `...` stands for any lines, and `...` in a line for any characters."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    pattern = ".*".join(re.escape(part) for part in expected[0].split("...")) + r"\Z"
    return bool(actual) and bool(re.match(pattern, actual[0])) and matches(expected[1:], actual[1:])


def make(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command.split()[:1], "--no-print-directory", *command.split()[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


PAIRS = documented()


def test_the_page_shows_every_step_and_make_evals():
    assert [command for command, _ in PAIRS] == [
        "make lesson-11 STEP=1",
        "make lesson-11 STEP=2",
        "make lesson-11 STEP=3",
        "make lesson-11 STEP=4",
        "make evals",
    ]


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """Each documented command's output, run once for the module (step 4's serves two tests)."""
    ran = {}
    for command, _ in PAIRS:
        done = make(command)
        assert done.returncode == 0, (
            f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        )
        ran[command] = done.stdout
    return ran


@pytest.mark.parametrize("command, expected", PAIRS, ids=[c for c, _ in PAIRS])
def test_each_command_prints_what_the_page_shows(outputs, command, expected):
    actual = [line.rstrip() for line in outputs[command].strip("\n").splitlines()]
    assert matches(expected.splitlines(), actual), (
        f"{command} printed:\n{outputs[command]}\nthe page shows:\n{expected}"
    )


def verdicts(output: str) -> dict[tuple[str, str], bool]:
    """(case, evaluator) -> passed, from a table whose rows read `case evaluator pass|fail ...`."""
    rows = re.findall(r"^(\S+)\s+(\S+)\s+(pass|fail|FAIL)\b", output, re.M)
    return {(case, evaluator): result == "pass" for case, evaluator, result in rows}


def test_step_4_and_make_evals_judge_the_cases_they_share_alike(outputs):
    step = verdicts(outputs["make lesson-11 STEP=4"])
    package = verdicts(outputs["make evals"])
    shared = step.keys() & package.keys()
    evaluators = {evaluator for _, evaluator in shared}
    assert evaluators == {"trajectory", "approval", "facts", "citations", "no_leak"}
    assert len({case for case, _ in shared}) == 31  # every case step 4 runs
    assert {key: step[key] for key in shared} == {key: package[key] for key in shared}
    assert not all(step[key] for key in shared)  # a tracked case fails in both, alike
