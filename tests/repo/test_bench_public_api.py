"""The sandbox benchmark measures the runner as a service uses it: through its public API only.
It reaches no private member of a runner class and subclasses none to override a private method
(a `_take` that the benchmark replaced would measure the benchmark, not the runner)."""

import ast
import inspect
from pathlib import Path

from research_agent.sandbox import admission, pool, runner, sweep

ROOT = Path(__file__).resolve().parents[2]
RUNNERS = [
    runner.SandboxRunner,
    admission.QueuedRunner,
    pool.ContainerPool,
    sweep.Sweeper,
]


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def runner_privates() -> set[str]:
    names = {n for cls in RUNNERS for n, _ in inspect.getmembers(cls) if private(n)}
    for cls in RUNNERS:  # attributes set in __init__ (self._client, self._idle ...)
        for node in ast.walk(ast.parse(inspect.getsource(cls))):
            if isinstance(node, ast.Attribute) and private(node.attr):
                names.add(node.attr)
    return names


def private_uses(source: str, privates: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in privates:
            found.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ClassDef):
            overrides = [
                f.name
                for f in node.body
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.name in privates
            ]
            found += [f"line {node.lineno}: {node.name} overrides {name}" for name in overrides]
    return found


def bench_file() -> Path:
    return ROOT / "bench" / "sandbox.py"


def test_the_check_finds_a_private_call_and_an_override():
    privates = runner_privates()
    assert {"_take", "_refill", "_client"} <= privates and "create" not in privates
    assert private_uses("runner._take(3)", privates) == ["line 1: ._take"]
    subclass = "class Rigged(ContainerPool):\n    def _take(self, timeout):\n        return None\n"
    assert private_uses(subclass, privates) == ["line 1: Rigged overrides _take"]
    assert private_uses("runner.create(3, 'x', runner.take_uid())", privates) == []


def test_the_sandbox_benchmark_uses_only_the_runners_public_api():
    assert private_uses(bench_file().read_text(encoding="utf-8"), runner_privates()) == []
