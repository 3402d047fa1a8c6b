"""A stepped lesson's files compared: the names a step defines, what the next step takes away from
the one before it and adds (each lesson's test_steps.py bounds both), and what `make` would run for
a step. Standard library only: lesson 08's own environment imports it too."""

import ast
import difflib
import subprocess
from pathlib import Path

from support.lessons import ROOT


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


def step_changes(before: str | Path, after: str | Path) -> tuple[list[str], list[str]]:
    """removed_and_added of two step files (paths from the repository's root)."""
    return removed_and_added(
        (ROOT / before).read_text(encoding="utf-8"), (ROOT / after).read_text(encoding="utf-8")
    )


def definitions(step: str | Path) -> dict[str, str]:
    """Each top-level name a step file (a path from the repository's root) defines, with the
    source of its definition: a function's or class's, or its assignments' one after the other
    (`x = ...`, `x: T = ...`, `x += ...`)."""
    source = (ROOT / step).read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    found[target.id] = found.get(target.id, "") + ast.get_source_segment(
                        source, node
                    )
    return found


def dropped_names(before: str | Path, after: str | Path, may_drop=frozenset()) -> list[str]:
    """The top-level names step `before` defines and step `after` does not, but for those in
    `may_drop` (the demonstration a step runs, which the next one replaces), sorted."""
    return sorted(set(definitions(before)) - set(may_drop) - set(definitions(after)))


def make_dry_run(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """What `make -n ARGUMENTS` would run, from the repository's root (among the arguments, each
    `-o TARGET` a target make must take as made: an environment `make test` built already)."""
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *arguments],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
