"""The three scripts are steps: each keeps the names and shape of the one it builds on and adds
to it. Steps 2 and 3 both build on step 1: `diff code/01_basic_api.py code/01_production_api.py`
is the production habits, `diff code/01_basic_api.py code/01_graceful_shutdown.py` the shutdown,
so these tests keep each diff small and about its idea.
"""

import ast
import inspect

import pytest

from support.lessons import ROOT
from tests.support.steps import removed_and_added

CODE = ROOT / "code"

STEPS = ["01_basic_api.py", "01_production_api.py", "01_graceful_shutdown.py"]
BASIC, PRODUCTION, SHUTDOWN = STEPS
PAIRS = [(BASIC, PRODUCTION), (BASIC, SHUTDOWN)]
STABLE = ["Agent", "AgentRequest", "AgentResponse", "lifespan", "get_agent", "AgentDep"]
STABLE += ["health", "ready", "invoke", "stream", "app"]


def tree(step: str) -> ast.Module:
    return ast.parse((CODE / step).read_text(encoding="utf-8"))


def top_level_names(module: ast.Module) -> dict[str, int]:
    """Each name a module defines at top level, with the line that defines it."""
    names = {}
    for node in module.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node.lineno
        elif isinstance(node, ast.Assign):
            names.update({t.id: node.lineno for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node.lineno
    return names


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = set(top_level_names(tree(before))) - set(top_level_names(tree(after)))
    assert not missing, f"{after} drops {sorted(missing)}"
    assert set(STABLE) <= set(top_level_names(tree(after)))


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_agent_keeps_its_methods_and_return_types(load_script, before, after):
    old, new = load_script(before).Agent, load_script(after).Agent
    for method in ("_inputs", "invoke", "stream"):
        assert inspect.signature(getattr(old, method)).parameters.keys() == (
            inspect.signature(getattr(new, method)).parameters.keys()
        ), method
    assert inspect.signature(new.invoke).return_annotation.__name__ == "AgentResponse"
    # The constructor may take more, but only with defaults: step 1's call still works.
    old_init = inspect.signature(old.__init__).parameters
    new_init = inspect.signature(new.__init__).parameters
    assert list(new_init)[: len(old_init)] == list(old_init)
    assert all(p.default is not p.empty for p in list(new_init.values())[len(old_init) :])


# How many code lines each step may take away from the one before: step 2 moves step 1's
# os.getenv() calls into Settings and re-indents two loops; step 3 changes an import and a title.
MOST_REMOVED = {PAIRS[0]: 25, PAIRS[1]: 2}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = removed_and_added(
        (CODE / before).read_text(encoding="utf-8"), (CODE / after).read_text(encoding="utf-8")
    )
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > 4 * len(removed)


# Step 3's diff against step 1 is the shutdown: these names, and none of step 2's habits.
SHUTDOWN_NAMES = {"SHUTDOWN_DRAIN_SECONDS", "GRACEFUL_SHUTDOWN_SECONDS", "CUT_MARGIN_SECONDS"}
SHUTDOWN_NAMES |= {"SHUTTING_DOWN", "ShutdownState", "EndInTime", "shutdown"}


def test_step_3_adds_the_shutdown_to_step_1_and_nothing_else():
    added = set(top_level_names(tree(SHUTDOWN))) - set(top_level_names(tree(BASIC)))
    assert added == SHUTDOWN_NAMES
    assert len((CODE / SHUTDOWN).read_text(encoding="utf-8").splitlines()) <= 400


@pytest.mark.parametrize("step", [PRODUCTION])
def test_settings_are_the_only_reader_of_the_environment(step):
    source = (CODE / step).read_text(encoding="utf-8")
    assert "os.getenv" not in source and "os.environ" not in source
    assert source.count("basicConfig(") == 1  # inside configure_logging(), nowhere else


@pytest.mark.parametrize("step", STEPS)
def test_helpers_are_defined_before_the_code_that_uses_them(step):
    module = tree(step)
    defined = top_level_names(module)
    late = []
    for node in module.body:
        # Names bound inside the statement (arguments, local variables) are not the module's.
        local = {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)}
        local |= {
            n.id
            for n in ast.walk(node)
            if isinstance(n, ast.Name) and n.ctx.__class__ is not ast.Load
        }
        for used in ast.walk(node):
            if (
                isinstance(used, ast.Name)
                and isinstance(used.ctx, ast.Load)
                and used.id not in local
                and defined.get(used.id, 0) > node.lineno
            ):
                late.append(f"line {used.lineno}: {used.id} (defined on line {defined[used.id]})")
    assert not late, "\n".join(late)
