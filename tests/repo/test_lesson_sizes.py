"""A lesson file is its lesson (issue 27), next to the core-path word test in test_docs.py:

1. every `code/NN_*.py` lesson file is at most 400 lines;
2. every Python excerpt the core path of docs/NN-*.md shows (an `include` or either side of an
   `include-diff`, above `## Going further`) comes from one of lesson NN's files or from a module
   one of them imports: what the doc shows is what the learner opens;
3. lesson 02's core path is its steps (code/lesson02/step*.py); its step 5 places each step in the
   research agent's modules (a table, step -> modules), which exist and import no layer a later
   lesson explains, and every other module of the package is one of the layers Going further lists
   with the lesson that explains it. The doc's two tables are the one list: the learner reads them,
   this test checks them.

Excerpts of other kinds of file (Dockerfiles, Compose files, the Makefile) are not lesson code and
are not checked here. The checks are functions of a root folder, so that they are tested on a
sample tree too: a limit that cannot fail checks nothing.
"""

import ast
import re
from pathlib import Path

import pytest

from scripts import docs_words

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
# Where a lesson's imports are found: code/ (its siblings) and research-agent/ (the `research_agent`
# package).
IMPORT_ROOTS = ("code", "research-agent")
INCLUDE = re.compile(r"^<!--\s*include(?P<diff>-diff)?:\s*(?P<specs>[^>]+?)\s*-->\s*$", re.M)


# Lesson 02's step 5: where each step lives in the package, a table `| Step | Modules |` in the core
# path, and the package's other modules, each a layer with the lesson that explains it.
PACKAGE_DIR = "research-agent/research_agent"
STEP_TABLE = re.compile(r"^\| Step \| Modules \|\n\| --- \| --- \|\n((?:\|.*\|\n)+)", re.M)
LAYERS_HEADING = "### The package's layers"
LESSON_LINK = re.compile(r"\((\d\d)-[\w-]+\.md")


def lesson_files(root: Path, number: str | None = None) -> list[Path]:
    """A lesson's files: its steps and the modules of its folder, code/lessonNN/, that run as
    programs (`if __name__ == "__main__":`): production versions, servers, clients."""
    found = sorted((root / "code").glob(f"lesson{number or '[0-9][0-9]'}/*.py"))
    runs = '__name__ == "__main__"'
    return [p for p in found if p.name.startswith("step") or runs in p.read_text(encoding="utf-8")]


def oversize(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Each lesson file over `limit` lines, with its length."""
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in lesson_files(root)}
    return {p.relative_to(root).as_posix(): n for p, n in sizes.items() if n > limit}


def module_file(root: Path, name: str) -> Path | None:
    """The repository file an absolute import names (`research_agent.sandbox.runner`, `chat_model`),
    if any."""
    parts = name.split(".")
    for base in IMPORT_ROOTS:
        for candidate in (
            root.joinpath(base, *parts).with_suffix(".py"),
            root.joinpath(base, *parts, "__init__.py"),
        ):
            if candidate.is_file():
                return candidate
    return None


def public_names(root: Path, package: str) -> dict[str, str]:
    """A package's public surface, name -> the module that defines it: what its `__init__.py`
    imports under TYPE_CHECKING, for editors and type checkers (it loads each name from there on
    first use). A module imported by name (`from .worker import job`) is that module."""
    init = module_file(root, package)
    if init is None or init.name != "__init__.py":
        return {}
    found = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
            continue
        for imported in node.body:
            if not (isinstance(imported, ast.ImportFrom) and imported.level == 1):
                continue
            module = ".".join(filter(None, (package, imported.module)))
            for alias in imported.names:
                itself = f"{module}.{alias.name}"
                found[alias.asname or alias.name] = (
                    itself if module_file(root, itself) is not None else module
                )
    return found


def imported_by(root: Path, lesson: Path) -> set[Path]:
    """The repository modules a lesson file imports, wherever in the file the import is."""
    found = set()
    for node in ast.walk(ast.parse(lesson.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from research_agent import x` may name a module research_agent/x.py, a name in
            # research_agent/__init__.py, or a name of its public surface (the module defining it)
            public = public_names(root, node.module)
            names = [
                node.module,
                *(public.get(alias.name, f"{node.module}.{alias.name}") for alias in node.names),
            ]
        else:
            continue
        found |= {path for name in names if (path := module_file(root, name))}
    return found


def run_as_module(root: Path, source: Path) -> set[Path]:
    """The repository modules a file starts as a program: `["python", "-m",
    "research_agent.worker"]` (lesson 05's worker runs in its own container, so no lesson imports
    it, but the lesson runs it)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, name in zip(values, values[1:], strict=False):
                if flag == "-m" and isinstance(name, str) and (path := module_file(root, name)):
                    # a package runs as its __main__.py, and so what that imports
                    main = path.with_name("__main__.py") if path.name == "__init__.py" else None
                    found |= {main, *imported_by(root, main)} if main and main.is_file() else {path}
    return found


def lesson_modules(root: Path, number: str) -> set[Path]:
    """Lesson NN's files, the modules they import, and the programs those start with `-m`."""
    lessons = set(lesson_files(root, number))
    imported = lessons.union(*(imported_by(root, lesson) for lesson in lessons))
    return imported.union(*(run_as_module(root, source) for source in imported))


def core_excerpt_files(doc_text: str) -> list[str]:
    """The Python files the core path's excerpts come from, in the order it shows them."""
    files = []
    for match in INCLUDE.finditer(docs_words.core_path(doc_text)):
        for spec in match["specs"].split():
            path = spec.split("#", 1)[0]
            if path.endswith(".py"):
                files.append(path)
    return files


def stray_excerpts(root: Path, doc: Path) -> list[str]:
    """Core-path excerpts of docs/NN-*.md from a file that is neither a lesson NN file nor a
    module one of them imports."""
    allowed = lesson_modules(root, doc.name[:2])
    allowed_names = {p.relative_to(root).as_posix() for p in allowed}
    return [
        f for f in core_excerpt_files(doc.read_text(encoding="utf-8")) if f not in allowed_names
    ]


def core_02_files(doc_text: str) -> set[str]:
    """The modules (`name.py`) step 5's table, in the core path, places lesson 02's steps in."""
    table = STEP_TABLE.search(docs_words.core_path(doc_text))
    if not table:
        return set()
    rows = [row.strip().strip("|").split("|") for row in table[1].splitlines()]
    return {name for cells in rows for name in re.findall(r"`(\w+\.py)`", cells[-1])}


def layer_table(doc_text: str) -> list[list[str]]:
    """The rows (cells) of the table under LAYERS_HEADING, its header left out."""
    start = doc_text.find(LAYERS_HEADING)
    if start < 0:
        return []
    section = doc_text[start:]
    end = section.find("\n#", len(LAYERS_HEADING))
    rows = [line for line in section[: end if end > 0 else None].splitlines() if line[:1] == "|"]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows[2:]]


def layer_modules(doc_text: str) -> set[str]:
    """The modules (`name.py`, or `name/` for a sub-package) named in the doc's table of layers."""
    return {
        name
        for cells in layer_table(doc_text)
        for name in re.findall(r"`(\w+\.py|\w+/)`", cells[1])
    }


def layer_folders(doc_text: str) -> dict[str, set[str]]:
    """Each folder the doc's table of layers names (`sandbox/`) -> the files and sub-folders
    (`limits/`) its row lists."""
    return {
        folder: set(re.findall(r"`([\w.]+/?)`", cells[2]))
        for cells in layer_table(doc_text)
        for folder in re.findall(r"`(\w+/)`", cells[1])
    }


def folder_files(root: Path, folder: str) -> set[str]:
    """The files of one of the package's folders, its `__init__.py` and caches left out, and its
    sub-packages as `name/`."""
    entries = list((root / PACKAGE_DIR / folder).iterdir())
    files = {
        p.name for p in entries if p.is_file() and p.name != "__init__.py" and p.suffix != ".pyc"
    }
    return files | {f"{p.name}/" for p in entries if (p / "__init__.py").is_file()}


def explained_in(cell: str) -> list[int]:
    """The lessons a cell of the table links: another lesson's doc (`03-containers.md`), and
    lesson 02 itself for a section of its own page (`#shutdown`)."""
    return [int(n) for n in LESSON_LINK.findall(cell)] + ([2] if "](#" in cell else [])


def later_layers(doc_text: str, lesson: int = 2) -> set[str]:
    """The layers' modules that a lesson after `lesson` explains (the last column links it)."""
    later = set()
    for cells in layer_table(doc_text):
        lessons = explained_in(cells[-1])
        if lessons and min(lessons) > lesson:
            later |= set(re.findall(r"`(\w+\.py|\w+/)`", cells[1]))
    return later


def package_modules(root: Path) -> set[str]:
    """Every module of the research agent's package, sub-packages as `name/`."""
    package = root / PACKAGE_DIR
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    return modules | {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}


def package_imports(source: str) -> set[str]:
    """The modules of the package a file imports (`from .x import`, `from research_agent.x
    import`, `import research_agent.x`, `from . import x`), as file names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found |= {alias.name for alias in node.names}
            elif node.module and node.module.split(".")[0] == "research_agent":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "research_agent" and len(parts) > 1:
                    found.add(parts[1])
    return {f"{name}.py" for name in found}


def core_02_problems(root: Path, core: set[str], later: set[str]) -> list[str]:
    """What breaks step 5's promise: no module named, a module that does not exist, a module that
    imports one of the `later` lessons' layers."""
    if not core:
        return ["step 5 places the steps in no module"]
    problems = []
    for name in sorted(core):
        path = root / PACKAGE_DIR / name
        if not path.is_file():
            problems.append(f"{name} does not exist")
            continue
        imported = package_imports(path.read_text(encoding="utf-8"))
        subpackages = {f"{Path(m).stem}/" for m in imported}
        problems += [
            f"{name} imports a later lesson's layer: {module}"
            for module in sorted((imported | subpackages) & later)
        ]
    return problems


LESSON_DOCS = [
    doc
    for doc in sorted((ROOT / "docs").glob("[0-9][0-9]-*.md"))
    if lesson_files(ROOT, doc.name[:2])
]


def test_there_are_lesson_files_and_docs_that_point_to_them():
    assert len(lesson_files(ROOT)) >= 6
    assert {doc.name[:2] for doc in LESSON_DOCS} >= {"01", "04", "05", "07"}


@pytest.mark.parametrize("lesson", lesson_files(ROOT), ids=lambda p: p.name)
def test_each_lesson_file_is_at_most_400_lines(lesson):
    lines = len(lesson.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{lesson.name} has {lines} lines, the limit is {MAX_LINES}: what the doc explains under"
        " 'Going further' belongs in a module the lesson imports, one per topic"
    )


@pytest.mark.parametrize("doc", LESSON_DOCS, ids=lambda d: d.name)
def test_core_path_excerpts_come_from_the_lesson_or_what_it_imports(doc):
    assert core_excerpt_files(doc.read_text(encoding="utf-8")), f"{doc.name} shows no code"
    assert stray_excerpts(ROOT, doc) == [], (
        f"{doc.name}'s core path shows code from files its lesson neither is nor imports"
    )


DOC_02 = ROOT / "docs" / "02-research-agent.md"


def test_lesson_02s_steps_live_in_modules_that_exist_and_import_no_later_layer():
    text = DOC_02.read_text(encoding="utf-8")
    core = core_02_files(text)
    assert {"agent.py", "search.py", "api.py", "cache.py"} <= core, core
    assert core_02_problems(ROOT, core, later_layers(text)) == []


def test_every_other_module_of_the_research_agent_is_a_layer_the_doc_lists():
    text = DOC_02.read_text(encoding="utf-8")
    core, layers = core_02_files(text), layer_modules(text)
    assert layers, f"docs/02 has no table under {LAYERS_HEADING!r}"
    assert package_modules(ROOT) - core - layers == set(), "modules the doc does not place"
    assert (core | layers) - package_modules(ROOT) == set(), (
        "the doc lists modules that do not exist"
    )


def test_each_layer_folder_lists_its_files():
    """A layer lives in a folder named after it; the table lists each folder's files, and a file
    added to or moved out of a folder fails here until the table says so."""
    folders = layer_folders(DOC_02.read_text(encoding="utf-8"))
    assert {"sandbox/", "access/", "worker/", "tracing/", "durable/"} <= set(folders), folders
    assert {f: folder_files(ROOT, f) for f in folders} == folders


# --- the checks themselves, on a sample tree ----------------------------------------------------


@pytest.fixture
def sample(tmp_path):
    (tmp_path / "code" / "lesson09").mkdir(parents=True)
    (tmp_path / "research-agent" / "research_agent").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "research-agent" / "research_agent" / "__init__.py").write_text("")
    (tmp_path / "research-agent" / "research_agent" / "runner.py").write_text(
        "def run():\n    pass\n"
    )
    (tmp_path / "research-agent" / "research_agent" / "pool.py").write_text(
        "def take():\n    pass\n"
    )
    (tmp_path / "code" / "helpers.py").write_text("def helper():\n    pass\n")
    (tmp_path / "code" / "lesson09" / "step1_lesson.py").write_text(
        "import helpers\nfrom research_agent.runner import run\n\n\ndef main():\n    run()\n"
        '\n\nif __name__ == "__main__":\n    main()\n'
    )
    return tmp_path


def write_doc(root: Path, core: str, further: str = "") -> Path:
    doc = root / "docs" / "09-sample.md"
    doc.write_text(f"# Lesson 09\n\n{core}\n## Going further\n\n{further}\n", encoding="utf-8")
    return doc


def excerpt(spec: str, diff: bool = False) -> str:
    return f"<!-- include{'-diff' if diff else ''}: {spec} -->\n```python\n```\n"


def test_a_file_over_the_limit_is_named_with_its_length(sample):
    assert oversize(sample) == {}
    (sample / "code" / "lesson09" / "step1_lesson.py").write_text("x = 1\n" * 401)
    assert oversize(sample) == {"code/lesson09/step1_lesson.py": 401}
    assert oversize(sample, limit=401) == {}
    (sample / "code" / "helpers.py").write_text("x = 1\n" * 900)  # not a lesson file
    assert oversize(sample, limit=401) == {}


def test_excerpts_from_the_lesson_and_its_imports_pass(sample):
    doc = write_doc(
        sample,
        excerpt("code/lesson09/step1_lesson.py#main")
        + excerpt("research-agent/research_agent/runner.py#run")
        + excerpt("code/helpers.py#helper")
        + excerpt("research-agent/research_agent/Dockerfile#build"),  # not Python: not lesson code
        further=excerpt(
            "research-agent/research_agent/pool.py#take"
        ),  # below the core path: any module
    )
    assert stray_excerpts(sample, doc) == []


def test_an_excerpt_from_a_module_the_lesson_does_not_import_fails(sample):
    doc = write_doc(
        sample,
        excerpt("code/lesson09/step1_lesson.py#main")
        + excerpt("research-agent/research_agent/pool.py#take"),
    )
    assert stray_excerpts(sample, doc) == ["research-agent/research_agent/pool.py"]
    diff = write_doc(
        sample,
        excerpt(
            "code/lesson09/step1_lesson.py#main research-agent/research_agent/pool.py#take", True
        ),
    )
    assert stray_excerpts(sample, diff) == ["research-agent/research_agent/pool.py"]


def test_a_module_the_lesson_or_its_imports_runs_with_dash_m_counts(sample):
    doc = write_doc(sample, excerpt("research-agent/research_agent/pool.py#take"))
    assert stray_excerpts(sample, doc) == ["research-agent/research_agent/pool.py"]
    (sample / "code" / "helpers.py").write_text(
        'COMMAND = ["python", "-m", "research_agent.pool"]\n'
    )
    assert stray_excerpts(sample, doc) == []


def test_an_import_anywhere_in_the_lesson_counts(sample):
    lesson = sample / "code" / "lesson09" / "step1_lesson.py"
    lesson.write_text(
        lesson.read_text() + "\n\ndef later():\n    from research_agent import pool\n"
    )
    doc = write_doc(sample, excerpt("research-agent/research_agent/pool.py#take"))
    assert stray_excerpts(sample, doc) == []


# --- lesson 02's core checks, on a sample package ------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> None:
    package = root / PACKAGE_DIR
    package.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (package / name).write_text(text, encoding="utf-8")


def test_a_step_module_that_is_missing_or_imports_a_later_layer_is_named(tmp_path):
    write_package(
        tmp_path,
        {
            "api.py": "from .service import run\nfrom .errors import AppError\n",
            "service.py": (
                "from . import sandbox\nimport research_agent.tracing\nfrom .durable import runs\n"
            ),
            "sandbox.py": "",
            "errors.py": "",
        },
    )
    later = {"sandbox.py", "tracing.py", "durable/"}
    assert core_02_problems(tmp_path, {"api.py", "service.py"}, later) == [
        "service.py imports a later lesson's layer: durable/",
        "service.py imports a later lesson's layer: sandbox.py",
        "service.py imports a later lesson's layer: tracing.py",
    ]
    assert core_02_problems(tmp_path, {"api.py", "gone.py"}, later) == ["gone.py does not exist"]
    assert core_02_problems(tmp_path, set(), later) == ["step 5 places the steps in no module"]


def test_the_tables_are_read_from_the_doc():
    doc = (
        "# Lesson 02\n\n| Step | Modules |\n| --- | --- |\n"
        "| 1: the tool | `search.py`, `agent.py` (`ResearchAgent`) |\n| 2: routes | `api.py` |\n"
        f"\n## Going further\n\n| Step | Modules |\n| --- | --- |\n| x | `late.py` |\n"
        f"\n{LAYERS_HEADING}\n\n| Layer | Modules | Attached as | Explained in |\n"
        "| --- | --- | --- | --- |\n| limits | `quotas.py`, `auth.py` | deps | [lim](#lim) |\n"
        "| sandbox | `sandbox.py` | a tool | [lesson 04](04-sandboxed-tools.md) |\n"
        "| durable runs | `durable/` | its service | [lesson 10](10-durable-runs.md) |\n\n"
        "`notes.py` outside the table\n\n### 16. Next\n| x | `later.py` | y |\n"
    )
    assert core_02_files(doc) == {"search.py", "agent.py", "api.py"}
    assert layer_modules(doc) == {"quotas.py", "auth.py", "sandbox.py", "durable/"}
    assert later_layers(doc) == {"sandbox.py", "durable/"}


def test_a_layer_folder_lists_its_files_and_sub_folders(sample):
    folder = sample / PACKAGE_DIR / "access"
    (folder / "limits").mkdir(parents=True)
    for name in ("__init__.py", "keys.py", "limits/__init__.py", "limits/budget.py"):
        (folder / name).write_text("")
    head = f"{LAYERS_HEADING}\n\n| Layer | Folder | Its files | Attached | Explained |\n| --- |\n"

    def doc(files: str) -> str:
        return f"{head}| access | `access/` | {files} | deps | [who](#who) |\n"

    assert folder_files(sample, "access/") == {"keys.py", "limits/"}
    assert layer_folders(doc("`keys.py`, `limits/`")) == {"access/": {"keys.py", "limits/"}}
    assert layer_folders(doc("`keys.py`")) == {"access/": {"keys.py"}}  # limits/ is missing
