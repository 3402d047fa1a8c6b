"""Nothing hidden (issue 69): every name a lesson's step file imports from our own code (the
research agent, a lesson package, support) is one the learner has seen. A name counts as seen when
it is

- defined in a step file of this lesson or an earlier one,
- defined in an excerpt of this lesson's core path or an earlier lesson's (the text above
  `## Going further`), or
- named in `backticks` in this lesson's core path (its "From earlier lessons" box counts).

A lesson never leans on another lesson's Going further: only core paths are read.
"""

import ast
import re
from pathlib import Path

from support.lessons import ROOT

# chat_model: code/chat_model.py, which the steps import by that name (`from chat_model import`).
OURS = re.compile(r"^(research_agent|lesson\d*|support|code|chat_model)(\.|$)")
GOING_FURTHER = "\n## Going further"

# Names still hidden, each with why it is allowed for now. Empty when every lesson shows its names.
ALLOWED: set[str] = set()


def lesson_of(path: Path) -> str | None:
    """The two-digit lesson a step file belongs to (`code/lesson05/step1_worker.py` -> `05`)."""
    m = re.match(r"(\d\d)_step\d", path.name)
    if m:
        return m.group(1)
    for part in path.parts:
        m = re.match(r"(?:lesson)?(\d\d)(?:[-_].*)?$", part)
        if m and path.name.startswith("step"):
            return m.group(1)
    return None


def step_files(root: Path) -> dict[str, list[Path]]:
    steps: dict[str, list[Path]] = {}
    for p in sorted((root / "code").rglob("*.py")):
        if p.name.startswith(("step", "0", "1")) and "step" in p.name:
            lesson = lesson_of(p.relative_to(root))
            if lesson:
                steps.setdefault(lesson, []).append(p)
    return steps


def core_paths(root: Path) -> dict[str, str]:
    return {
        d.name[:2]: d.read_text(encoding="utf-8").split(GOING_FURTHER)[0]
        for d in sorted((root / "docs").glob("[0-9][0-9]-*.md"))
    }


def defined(text: str, name: str) -> bool:
    n = re.escape(name)
    return bool(re.search(rf"\b(def|class)\s+{n}\b|^\s*{n}\s*(:[^=]*)?=", text, re.M))


def is_step_module(module: str) -> bool:
    """`from step1_api import app` or `from lesson05.step2_parallel import ...`: an earlier step."""
    return bool(re.match(r"^(lesson\d*\.)?step\d", module.split(".")[-1])) or ".step" in module


def hidden_names(root: Path = ROOT) -> dict[str, set[str]]:
    """Lesson -> each `module.name` its step files import from our code that the learner has not
    seen."""
    steps, core = step_files(root), core_paths(root)
    found: dict[str, set[str]] = {}
    for lesson in sorted(steps):
        shown = "".join(core[k] for k in sorted(core) if k <= lesson)
        step_text = "".join(
            p.read_text(encoding="utf-8") for k in sorted(steps) if k <= lesson for p in steps[k]
        )
        here = core.get(lesson, "")
        for p in steps[lesson]:
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                module = node.module or ""
                if not (OURS.match(module) or node.level) or not module or is_step_module(module):
                    continue
                for alias in node.names:
                    name = alias.name
                    named = f"`{name}`" in here or re.search(
                        rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", here
                    )
                    if defined(shown, name) or defined(step_text, name) or named:
                        continue
                    found.setdefault(lesson, set()).add(f"{module}.{name}")
    return found


def test_every_name_a_step_imports_from_our_code_is_one_the_learner_has_seen():
    hidden = hidden_names()
    remaining = {f"lesson {k}: {name}" for k, names in hidden.items() for name in names}
    assert remaining <= ALLOWED, sorted(remaining - ALLOWED)


def test_a_name_only_a_going_further_section_shows_is_hidden(tmp_path):
    (tmp_path / "code" / "lesson01").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "code" / "lesson01" / "step1_api.py").write_text(
        "from lesson01.agent import Agent, Shown, Named\n"
    )
    (tmp_path / "docs" / "01-agent-api.md").write_text(
        "# 1\n\nUses `Named`.\n\n```python\nclass Shown:\n    pass\n```\n\n"
        "## Going further\n\n```python\nclass Agent:\n    pass\n```\n"
    )
    assert hidden_names(tmp_path) == {"01": {"lesson01.agent.Agent"}}


def test_the_shared_chat_model_module_is_our_code(tmp_path):
    """`code/chat_model.py` is imported as `chat_model`: its names are ours to show too."""
    (tmp_path / "code" / "lesson01").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "code" / "lesson01" / "step1_api.py").write_text(
        "from chat_model import make_chat_model\n"
    )
    (tmp_path / "docs" / "01-agent-api.md").write_text("# 1\n\nThe model answers.\n")
    assert hidden_names(tmp_path) == {"01": {"chat_model.make_chat_model"}}
