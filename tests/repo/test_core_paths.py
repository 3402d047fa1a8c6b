"""No lesson's core path shows a later lesson's idea (issue 38 item 3).

The lesson -> modules map is docs/02's table of the package's layers ("Explained in": a layer a
later lesson explains belongs to that lesson; lesson 02's core modules, and a layer explained in
lesson 02's own sections, to lesson 02). The docs and this test read the same table. Two checks for
every excerpt above a lesson doc's `## Going further`:

1. the excerpt's file, if it is a module of the research agent, belongs to that lesson or an
   earlier one;
2. no name the excerpt uses comes from a module of a later lesson (a `tracer()` in lesson 04's
   `run_python` is lesson 09's idea, shown in lesson 04);
3. before lesson 09, no excerpt uses OpenTelemetry or a trace context (a name imported from
   `opentelemetry`, or `traceparent` in any case): tracing is lesson 09's.

And for every file a core path links, or includes whole (the learner is sent to read all of it):

4. it carries no idea of a later lesson's layer, the ones attached where an app is composed
   (LINKED_IDEAS: MCP is lesson 08's, tracing 09's, durable runs 10's), not even in a comment:
   a later lesson attaches its layer from outside the files an earlier core path sends you to.
"""

import ast
import re
from pathlib import Path

import pytest

from scripts import code_to_read, docs_words
from tests.repo.test_lesson_sizes import (
    DOC_02,
    INCLUDE,
    LAYERS_HEADING,
    PACKAGE_DIR,
    ROOT,
    core_02_files,
    explained_in,
    public_names,
)

FENCE = re.compile(r"^```\w*\n(.*?)^```", re.M | re.S)


def module_lessons(doc_02: str) -> dict[str, int]:
    """Module file name (`app.py`) or folder (`sandbox/`) -> the lesson that explains it."""
    found = {name: 2 for name in core_02_files(doc_02)}
    section = doc_02[doc_02.find(LAYERS_HEADING) :]
    end = section.find("\n#", len(LAYERS_HEADING))
    for row in section[: end if end > 0 else None].splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] in ("Layer", "---"):
            continue
        lessons = explained_in(cells[-1])
        for name in re.findall(r"`(\w+\.py|\w+/)`", cells[1]):
            found[name] = min(lessons) if lessons else 2
    return found


def lesson_of(path: str, lessons: dict[str, int]) -> int | None:
    """The lesson a repository file belongs to, if it is a module of the research agent."""
    if not path.startswith(PACKAGE_DIR + "/"):
        return None
    rest = path[len(PACKAGE_DIR) + 1 :]
    key = rest.split("/")[0] + "/" if "/" in rest else rest
    return lessons.get(key)


def imported_names(root: Path, path: str) -> dict[str, str]:
    """Each name a file imports from the research agent's package -> the module file it comes
    from (`tracer` -> `research-agent/research_agent/tracing/otel.py`)."""
    package = "research_agent"
    public = public_names(root, package)
    found = {}
    for node in ast.walk(ast.parse((root / path).read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level and path.startswith(PACKAGE_DIR + "/"):
            here = Path(path).parent.relative_to(PACKAGE_DIR).parts[: max(0, 2 - node.level)]
            module = ".".join((package, *here, *([node.module] if node.module else [])))
        elif node.module and node.module.split(".")[0] == package:
            module = node.module
        else:
            continue
        for alias in node.names:
            source = module
            if module == package:
                source = public.get(alias.name, f"{package}.{alias.name}")
            parts = source.split(".")[1:]
            found[alias.asname or alias.name] = "/".join([PACKAGE_DIR, *parts]) + ".py"
    return found


TRACING_LESSON = 9


def telemetry_names(root: Path, path: str) -> set[str]:
    """The names a file imports from OpenTelemetry."""
    found = set()
    for node in ast.walk(ast.parse((root / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            found |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                (alias.asname or alias.name).split(".")[0]
                for alias in node.names
                if alias.name.startswith("opentelemetry")
            }
    return found


def core_excerpts(doc_text: str) -> list[tuple[str, str]]:
    """(file, code) of every Python excerpt above `## Going further` (either side of a diff)."""
    core = docs_words.core_path(doc_text)
    found = []
    for match in INCLUDE.finditer(core):
        block = FENCE.search(core, match.end())
        code = block[1] if block else ""
        for spec in match["specs"].split():
            path = spec.split("#", 1)[0]
            if path.endswith(".py"):
                found.append((path, code))
    return found


def later_ideas(root: Path, doc: Path, lessons: dict[str, int]) -> list[str]:
    number = int(doc.name[:2])
    problems = []
    for path, code in core_excerpts(doc.read_text(encoding="utf-8")):
        owner = lesson_of(path, lessons)
        if owner is not None and owner > number:
            problems.append(f"{path} is lesson {owner:02d}'s")
        if not (root / path).is_file():
            continue
        used = set(re.findall(r"\b\w+\b", code))
        if number < TRACING_LESSON:
            traced = sorted(used & telemetry_names(root, path))
            traced += ["traceparent"] if "traceparent" in code.lower() else []
            problems += [f"{path} shows {name} (tracing, lesson 09)" for name in traced]
        for name, source in imported_names(root, path).items():
            owner = lesson_of(source, lessons)
            if name in used and owner is not None and owner > number:
                problems.append(f"{path} shows {name} (from {source}, lesson {owner:02d})")
    return sorted(set(problems))


# A later lesson's layer, by the lesson that owns it: the words that name its idea (any case).
LINKED_IDEAS = {
    8: ("MCP", r"\bmcp\b"),
    9: ("tracing", r"opentelemetry|traceparent|\btracer\b|\btracing\b|\bspans?\b"),
    10: (
        "durable runs",
        r"\bcheckpoint(?:er|s)?\b|\binterrupt\(|\bthread_id\b|Command\(resume|HumanInTheLoop",
    ),
}


def files_sent_to(doc: Path, root: Path = ROOT) -> list[str]:
    """The files (relative to the repository) a doc's core path links or includes whole."""
    core = docs_words.core_path(doc.read_text(encoding="utf-8"))
    whole = set()
    for match in INCLUDE.finditer(core):
        spec = match["specs"].split()[0]
        if not match["diff"] and "#" not in spec:
            whole.add(spec)
    for match in code_to_read.LINK.finditer(docs_words.prose(core)):
        target = (doc.parent / match["target"]).resolve()
        inside = target.is_file() and target.is_relative_to(root.resolve())
        if inside and code_to_read.is_code(target):
            whole.add(target.relative_to(root.resolve()).as_posix())
    return sorted(whole)


def later_ideas_in_linked_files(root: Path, doc: Path) -> list[str]:
    number = int(doc.name[:2])
    problems = []
    for path in files_sent_to(doc, root):
        if not (root / path).is_file():
            continue
        text = (root / path).read_text(encoding="utf-8")
        for owner, (idea, pattern) in LINKED_IDEAS.items():
            if owner <= number:
                continue
            words = sorted({m[0] for m in re.finditer(pattern, text, re.I)})
            if words:
                shown = ", ".join(words[:4])
                problems.append(f"{path} carries {idea} (lesson {owner:02d}): {shown}")
    return problems


LESSONS = module_lessons(DOC_02.read_text(encoding="utf-8"))
DOCS = sorted((ROOT / "docs").glob("[0-9][0-9]-*.md"))


def test_the_map_places_each_layer_in_its_lesson():
    assert LESSONS["agent.py"] == 2 and LESSONS["access/"] == 2 and LESSONS["web/"] == 2
    assert LESSONS["sandbox/"] == 4 and LESSONS["worker/"] == 5
    assert LESSONS["mcp/"] == 8 and LESSONS["tracing/"] == 9
    assert LESSONS["durable/"] == 10


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_no_core_path_shows_a_later_lessons_idea(doc):
    assert later_ideas(ROOT, doc, LESSONS) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_no_file_a_core_path_sends_you_to_carries_a_later_lessons_idea(doc):
    assert later_ideas_in_linked_files(ROOT, doc) == []


def test_a_later_lessons_idea_in_a_linked_file_is_named(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "05_api.py").write_text("# the run's spans: lesson 09\nx = 1\n")
    (tmp_path / "code" / "05_page.py").write_text("y = 2\n")
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "05-x.md"
    doc.write_text(
        "# 05\n\nRead [the API](../code/05_api.py).\n\n<!-- include: code/05_page.py -->\n"
        "```python\ny = 2\n```\n\n## Going further\n\n[Spans](../code/05_api.py)\n"
    )
    assert files_sent_to(doc, tmp_path) == ["code/05_api.py", "code/05_page.py"]
    assert later_ideas_in_linked_files(tmp_path, doc) == [
        "code/05_api.py carries tracing (lesson 09): spans"
    ]
    # linked only under Going further: not the core path's
    doc.write_text(doc.read_text().replace("Read [the API](../code/05_api.py).", "Read it."))
    assert later_ideas_in_linked_files(tmp_path, doc) == []
    # lesson 09 itself may link it
    doc.write_text(doc.read_text().replace("Read it.", "Read [the API](../code/05_api.py)."))
    assert later_ideas_in_linked_files(tmp_path, doc.rename(tmp_path / "docs" / "09-x.md")) == []


def test_a_later_lessons_module_or_name_in_a_core_excerpt_is_named(tmp_path):
    package = tmp_path / PACKAGE_DIR
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tracing.py").write_text("def tracer():\n    pass\n")
    (package / "sandbox.py").write_text(
        "from .tracing import tracer\n\n\ndef run():\n    with tracer():\n        pass\n"
    )
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "04-sandbox.md"
    block = "```python\ndef run():\n    with tracer():\n        pass\n```\n"
    include = f"<!-- include: {PACKAGE_DIR}/sandbox.py#run -->\n"
    doc.write_text(f"# 04\n\n{include}{block}\n## Going further\n")
    lessons = {"sandbox.py": 4, "tracing.py": 9}
    assert later_ideas(tmp_path, doc, lessons) == [
        f"{PACKAGE_DIR}/sandbox.py shows tracer (from {PACKAGE_DIR}/tracing.py, lesson 09)"
    ]
    doc.write_text(f"# 04\n\n{include}{block.replace('tracer', 'timer')}\n## Going further\n")
    assert later_ideas(tmp_path, doc, lessons) == []
    doc.write_text(f"# 02\n\n{include}```python\npass\n```\n\n## Going further\n")
    assert later_ideas(tmp_path, doc.rename(tmp_path / "docs" / "02-core.md"), lessons) == [
        f"{PACKAGE_DIR}/sandbox.py is lesson 04's"
    ]


def test_tracing_in_a_core_excerpt_before_lesson_09_is_named(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "07_x.py").write_text(
        "from opentelemetry import propagate\n\n\ndef envelope():\n    context = {}\n"
        "    propagate.inject(context)\n    return context\n"
    )
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "07-x.md"
    block = "```python\ndef envelope():\n    context = {}\n    propagate.inject(context)\n```\n"
    doc.write_text(f"# 07\n\n<!-- include: code/07_x.py#envelope -->\n{block}\n## Going further\n")
    assert later_ideas(tmp_path, doc, {}) == ["code/07_x.py shows propagate (tracing, lesson 09)"]
    field = "```python\nTRACEPARENT: str | None = None\n```\n"
    doc.write_text(f"# 07\n\n<!-- include: code/07_x.py#envelope -->\n{field}\n## Going further\n")
    assert later_ideas(tmp_path, doc, {}) == ["code/07_x.py shows traceparent (tracing, lesson 09)"]
    doc.rename(nine := tmp_path / "docs" / "09-x.md")
    assert later_ideas(tmp_path, nine, {}) == []


# --- The package's layers, composed in one place -----------------------------------------------

PACKAGE = ROOT / PACKAGE_DIR
# Where a process is composed, the one kind of module that attaches a later lesson's layer to an
# earlier one's: the service (its app, and its agent's tools) and lesson 05's worker process.
COMPOSITION_ROOTS = {"app.py", "tools.py", "worker/worker.py"}
# What every layer shares: the settings, Redis, the HTTP edge and what the service tells about
# itself. They import nothing above them.
SHARED = ("settings.py", "redis_client.py", "web/", "observability/")
# Layers that are built from their own settings class, never the service's whole `Settings`.
LAYER_FOLDERS = ("access/", "sandbox/", "mcp/", "tracing/", "durable/", "web/", "observability/")


def package_file(path: Path) -> str:
    """A module's path inside the package: `web/shutdown.py`."""
    return path.relative_to(PACKAGE).as_posix()


def package_imports(path: Path) -> dict[str, set[str]]:
    """The package's modules a module imports (as package_file names them) -> the names it takes
    from each, wherever the import is (under TYPE_CHECKING, inside a function)."""
    here = path.parent.relative_to(PACKAGE).parts
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = [*here[: len(here) - node.level + 1], *(node.module or "").split(".")]
        elif (node.module or "").split(".")[0] == "research_agent":
            base = node.module.split(".")[1:]
        else:
            continue
        for alias in node.names:
            for parts in ([*base, alias.name], base):  # a module by name, or a name of one
                parts = [p for p in parts if p]
                for file in (PACKAGE.joinpath(*parts, "__init__.py"), PACKAGE.joinpath(*parts)):
                    file = file if file.suffix == ".py" else file.with_suffix(".py")
                    if parts and file.is_file():
                        found.setdefault(package_file(file), set()).add(alias.name)
                        break
                else:
                    continue
                break
    return found


def later_layer_imports(lessons: dict[str, int]) -> list[str]:
    """Each import of a later lesson's layer by a module that is not a composition root."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = package_file(path)
        mine = lesson_of(f"{PACKAGE_DIR}/{name}", lessons)
        if name in COMPOSITION_ROOTS or mine is None:
            continue
        for imported in package_imports(path):
            theirs = lesson_of(f"{PACKAGE_DIR}/{imported}", lessons)
            if theirs is not None and theirs > mine:
                found.append(f"{name} (lesson {mine:02d}) imports {imported} (lesson {theirs:02d})")
    return found


def test_only_where_a_process_is_composed_is_a_later_lessons_layer_attached():
    """Lesson 04's sandbox knows nothing of lesson 09's traces: tools.py wraps its runs in spans.
    Every other module imports only its own lesson's layers and earlier ones."""
    assert later_layer_imports(LESSONS) == []
    assert all((PACKAGE / root).is_file() for root in COMPOSITION_ROOTS)


def test_a_shared_module_imports_nothing_above_it():
    """The settings, Redis, the web edge (the error shape, the middleware, the process's SIGTERM
    drain) and observability are below every layer: none of them imports a layer, the agent or
    the app. (The shutdown cut around the agent's runs is until_cut.py, an agent layer.)"""
    shared = lambda name: name.startswith(SHARED)  # noqa: E731
    above = {
        f"{package_file(path)} imports {imported}"
        for path in PACKAGE.rglob("*.py")
        if shared(package_file(path))
        for imported in package_imports(path)
        if not shared(imported)
    }
    assert above == set()


def test_each_layer_is_built_from_its_own_settings_class():
    """access/ takes AccessSettings, lesson 04's runner SandboxConfig, MCP McpSettings...: no layer
    reads the service's whole Settings, which only the modules that compose it name."""
    whole = {
        package_file(path)
        for path in PACKAGE.rglob("*.py")
        if package_file(path).startswith(LAYER_FOLDERS)
        and "Settings" in package_imports(path).get("settings.py", set())
    }
    assert whole == set()


def test_the_checks_see_a_later_layer_a_shared_module_reaching_up_and_the_whole_settings():
    tools = package_imports(PACKAGE / "tools.py")
    assert "sandbox/python_tool.py" in tools and "tracing/otel.py" in tools  # inside a function
    assert "Settings" in package_imports(PACKAGE / "app.py")["settings.py"]
    assert package_imports(PACKAGE / "__init__.py")["worker/job.py"] >= {"Job", "job"}
    assert "TracedRunner" in package_imports(PACKAGE / "tools.py")["tracing/otel.py"]
    lessons = LESSONS | {"agent.py": 9}  # as if the agent were lesson 09's: everything reaches up
    assert "search.py (lesson 02) imports settings.py (lesson 02)" not in later_layer_imports(
        lessons
    )
    assert "service.py (lesson 02) imports agent.py (lesson 09)" in later_layer_imports(lessons)


def test_a_research_routes_service_is_one_dependency_that_declares_what_it_composes():
    """The chain from a route to the agent is read in the code: the route asks for the service
    (deps.get_service), whose parameters are the dependencies it composes (the agent, the cache,
    the caller's grant, the shutdown cut). Nothing is handed over through the app's or the
    request's state: nothing in the package stores a value on `request.state` that another module
    reads, but the access log's two fields, and the key check's caller (key_before_body.py)."""
    from research_agent import Settings, create_app
    from research_agent.deps import get_agent, get_cache, get_cut, get_grant, get_service

    app = create_app(Settings(LOG_LEVEL="WARNING"))
    # FastAPI 0.165 keeps an included router whole: its routes, as served, are its candidates.
    served = [
        c
        for r in app.routes
        for c in (r.effective_candidates() if hasattr(r, "effective_candidates") else [r])
    ]
    research = [r for r in served if getattr(r, "path", "").startswith("/v1/research")]
    assert len(research) == 2
    for route in research:
        (service,) = [d for d in route.dependant.dependencies if d.name == "service"]
        assert service.call is get_service
        declared = {d.call for d in service.dependencies}
        assert {get_agent, get_cache, get_grant, get_cut} <= declared, declared

    stored = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "request.state":
                stored.add(target.attr)
            if isinstance(target, ast.Attribute) and target.attr == "compose_service":
                stored.add(target.attr)
    assert stored == {"caller", "key_fingerprint"}
