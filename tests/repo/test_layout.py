"""Where support code lives: what tests and benchmarks share in the installed support package,
test-only helpers in tests/support/, benchmarks in bench/ with one shared module, and no folder
flattened onto the test path (each is imported by its own name)."""

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

from support.lessons import makefile_text

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "bench-results", "node_modules"}


def python_files() -> list[Path]:
    files = []
    for top in ROOT.iterdir():
        if top.name in SKIP or top.name.startswith("."):
            continue
        files += [top] if top.suffix == ".py" else sorted(top.rglob("*.py")) if top.is_dir() else []
    return files


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_folder_is_put_on_the_test_path_the_packages_are_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "pythonpath" not in config["tool"]["pytest"]["ini_options"]
    for folder in ("code", "research-agent", "scripts", "bench", "tests", "tests/support"):
        assert str(ROOT / folder) not in sys.path, f"{folder}/ is flattened onto sys.path"
    # Installed (make install): each name maps to its own folder, not through a path entry.
    for module, path in {
        "research_agent": "research-agent/research_agent/__init__.py",
        "chat_model": "code/chat_model.py",
        "lesson05": "code/lesson05/__init__.py",
    }.items():
        assert importlib.util.find_spec(module).origin == str(ROOT / path), module


def test_support_modules_and_scripts_are_reached_only_through_their_folder():
    # These were top-level names while scripts/ and tests/support/ sat on the test path.
    for flat in ("bench_results", "measurements", "swarm", "docs_sync", "ports", "errors"):
        assert importlib.util.find_spec(flat) is None, f"`import {flat}` still works"
    for module in ("support.ports", "tests.support.errors", "bench.results", "scripts.swarm"):
        assert importlib.util.find_spec(module) is not None, module
    # `support` is the root's package (shared with the benchmarks), not tests/support/.
    assert importlib.util.find_spec("support").origin == str(ROOT / "support" / "__init__.py")


def test_no_python_file_imports_a_flattened_name():
    flattened = re.compile(
        r"^\s*(?:from|import) (support\.(?:errors|sse|redis|docker_cli)|bench_\w+|measurements"
        r"|swarm|docs_\w+)\b",
        re.M,
    )
    offenders = [relative(p) for p in python_files() if flattened.search(p.read_text("utf-8"))]
    assert offenders == []


def test_benchmarks_live_only_in_bench():
    # A benchmark is a file that writes its figures through bench/results.py.
    writes_results = re.compile(
        r"^\s*from bench(?:\.results)? import .*\bresults\b|^\s*import bench\b", re.M
    )
    outside = [
        relative(p)
        for p in python_files()
        if writes_results.search(p.read_text("utf-8"))
        and p.parent.name != "bench"
        and not relative(p).startswith("tests/")
    ]
    assert outside == []
    assert not [relative(p) for p in python_files() if p.name.startswith("bench_")]
    # Every `make bench-*` target runs a module of bench/.
    makefile = makefile_text()
    modules = re.findall(r"-m bench\.(\w+)", makefile)
    assert modules, "no make target runs a benchmark from bench/"
    for module in modules:
        assert (ROOT / "bench" / f"{module}.py").is_file(), module
    assert not re.search(r"\bscripts/bench", makefile)


def test_one_percentile_and_one_to_ms_in_the_repository():
    defined: dict[str, list[str]] = {}
    pattern = re.compile(r"^\s*def (\w*(?:percentile|quantile|to_ms)\w*)\(", re.M)
    for path in python_files():
        for name in pattern.findall(path.read_text("utf-8")):
            if not name.startswith("test_"):
                defined.setdefault(name, []).append(relative(path))
    assert defined == {"percentile": ["bench/results.py"], "to_ms": ["bench/results.py"]}


def test_the_sandbox_and_durable_layers_reach_nothing_in_the_access_layer():
    """The sandbox (lesson 04) and durable runs (lesson 10) stand below the access layer (callers,
    keys, quotas): what both use, `HeldSlots`, is on the package's ground floor beside settings.py,
    so a reader of either never opens access/."""
    package = ROOT / "research-agent" / "research_agent"
    reaching = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("sandbox", "durable")
        for path in (package / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*from (\.\.access|research_agent\.access)\b", line)
    ]
    assert not reaching, reaching
    assert (package / "slots.py").exists() and not (package / "access/limits/slots.py").exists()


def test_lessons_10_and_12_read_their_sandbox_settings_through_one_class():
    """Lesson 10's agent declares which SANDBOX_* variables its sandbox reads; lesson 10's
    production API and lesson 12's servers import that class instead of declaring their own."""
    declared = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "code").rglob("*.py")
        if re.search(r"1[02]", str(path.relative_to(ROOT / "code")))
        and re.search(r"^class Sandbox\(", path.read_text(), re.M)
    ]
    assert declared == ["code/lesson10/agent.py"], declared


def test_lesson_08s_call_policy_imports_the_upstream_client_one_way():
    """The gateway's outbound client (the capped transport, the kept client) is upstream.py's; the
    inbound policy (call_limits.py) imports it and hands each call's time limit over by a call,
    not through a context variable of its own that upstream.py would read."""
    lesson08 = ROOT / "code" / "lesson08"
    upstream = (lesson08 / "upstream.py").read_text()
    policy = (lesson08 / "call_limits.py").read_text()
    assert not re.search(r"^from lesson08(\.call_limits| import call_limits)", upstream, re.M)
    assert re.search(r"^class CappedTransport\b", upstream, re.M)
    assert not re.search(r"^class (CappedTransport|CappedStream|KeptClient)\b", policy, re.M)
    assert "upstream.call_limited_by(" in policy and "CALL_LIMIT" not in policy
