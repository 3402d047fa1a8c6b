"""What the lessons and the benchmarks take from the research agent is one small, documented
surface: the names research_agent/__init__.py lists in `__all__`, imported from the package itself
(`from research_agent import error_body`), never from a module inside it. The benchmarks import no
test helper either: what they share with the tests is in the support package.

Imports are read with `ast`, so an import inside a function counts as much as one at the top."""

import ast
import importlib
from pathlib import Path

import pytest

import research_agent

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "research_agent"


def checked_files(root: Path = ROOT) -> list[Path]:
    """Every lesson's files (numbered scripts and packages) and every benchmark."""
    return sorted([*(root / "code").rglob("*.py"), *(root / "bench").rglob("*.py")])


def outside_the_surface(source: str, public: set[str]) -> list[str]:
    """Each import of the package that is not `from research_agent import <public name>`, and
    each `research_agent.<name>` attribute of a plain `import research_agent` that is not public."""
    found = []
    plain = set()  # the names a plain `import research_agent [as x]` is bound to
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == PACKAGE:
                found += [
                    f"line {node.lineno}: {alias.name}"
                    for alias in node.names
                    if alias.name not in public
                ]
            elif node.module.startswith(f"{PACKAGE}."):
                found.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE:
                    plain.add(alias.asname or PACKAGE)
                elif alias.name.startswith(f"{PACKAGE}."):
                    found.append(f"line {node.lineno}: import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in plain
            and node.attr not in public
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def imported_names(source: str) -> set[str]:
    """The public names a file takes from the package."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == PACKAGE:
            names |= {alias.name for alias in node.names}
    return names


def test_the_check_finds_a_module_a_private_name_and_an_attribute():
    public = {"error_body", "Job"}
    assert outside_the_surface("from research_agent import error_body, Job\n", public) == []
    assert outside_the_surface(
        "from research_agent.web.error_shape import error_body\n", public
    ) == ["line 1: from research_agent.web.error_shape"]
    assert outside_the_surface("from research_agent import _ERRORS\n", public) == [
        "line 1: _ERRORS"
    ]
    assert outside_the_surface("import research_agent.tracing.otel\n", public) == [
        "line 1: import research_agent.tracing.otel"
    ]
    inside = "def f():\n    import research_agent as ra\n    return ra.Job, ra.cache\n"
    assert outside_the_surface(inside, public) == ["line 3: ra.cache"]
    other = "from app.research_agent import x\nimport researcher\n"
    assert outside_the_surface(other, public) == []


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_lessons_and_benchmarks_use_only_the_public_surface(path):
    source = path.read_text(encoding="utf-8")
    assert outside_the_surface(source, set(research_agent.__all__)) == [], (
        f"{path.relative_to(ROOT)} reaches into the research agent: import from `research_agent`"
        " a name its __all__ lists (research-agent/research_agent/__init__.py), or add the name"
        " there if a lesson really needs it"
    )


def test_the_surface_is_what_the_lessons_and_benchmarks_use_and_every_name_resolves():
    used = set().union(*(imported_names(p.read_text(encoding="utf-8")) for p in checked_files()))
    assert set(research_agent.__all__) - used == set(), "public names no lesson or benchmark uses"
    for name in research_agent.__all__:
        assert getattr(importlib.import_module(PACKAGE), name) is not None, name
    assert not [name for name in research_agent.__all__ if name.startswith("_")]


def test_benchmarks_import_no_test_helper():
    offenders = []
    for path in checked_files():
        if path.parent.name != "bench":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{path.name}: {m}" for m in modules if m.split(".")[0] == "tests"]
    assert offenders == [], "what a benchmark shares with the tests belongs in support/"


def surface_imports() -> dict[str, tuple[str, str]]:
    """What research_agent/__init__.py imports under TYPE_CHECKING: name -> (module, its name
    there)."""
    init = Path(research_agent.__file__)
    found = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imported in node.body:
                assert isinstance(imported, ast.ImportFrom) and imported.level == 1, imported
                module = ".".join(filter(None, (PACKAGE, imported.module)))
                for alias in imported.names:
                    found[alias.asname or alias.name] = (module, alias.name)
    return found


def test_each_public_name_is_imported_statically_from_where_it_lives():
    """An editor's go-to-definition, a type checker and a reader follow the imports under
    TYPE_CHECKING; at run time the package loads each name on first use from the same imports.
    So the imports are the surface: __all__ names them all, and each name is the object its
    import names (not one resolved some other way)."""
    imports = surface_imports()
    assert sorted(imports) == sorted(research_agent.__all__)
    for name, (module_name, attribute) in imports.items():
        module = importlib.import_module(module_name)
        if not hasattr(module, attribute):  # a module itself (`from .worker import job`)
            importlib.import_module(f"{module_name}.{attribute}")
        assert getattr(research_agent, name) is getattr(module, attribute), name
