"""The docs cannot drift from the code.

1. Every excerpt in docs/ is identical to the file (or symbol) it includes
   (scripts/docs_sync.py --check), and every include names a file and symbol that exist.
2. Every `make ...` line in a shell block of docs/ or README.md names a target of the Makefile.
3. Every shell block in docs/ is checked: it only runs make targets, or it is marked
   `<!-- server: TARGET -->` and run here, or it is marked `<!-- checked-by: ... -->` and names the
   make target or test file that exercises the same steps.
4. Each `<!-- server: TARGET -->` block is run against a real server (started as `make TARGET`
   would, on a free port, with no token delay), in the order the doc shows them, and its output
   is compared with the `<!-- expected-output -->` block that follows it:
   - JSON structurally; request ids, timestamps, latencies and uptimes may differ; a value "..." in
     the doc matches anything (used where the answer depends on what the search finds);
   - text line by line; a line `...` stands for any number of lines, and `...` inside a line for any
     characters.
"""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts import docs_links, docs_sync, docs_words
from support.lessons import makefile_text, step_file
from tests.support.doc_output import printed_as_shown

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
SHELL_LANGS = {"bash", "console", "sh", "shell"}
VOLATILE_KEYS = {"request_id", "latency_ms", "created_at", "uptime_seconds", "time", "duration_ms"}


# How `make TARGET` starts each lesson server: (working directory, script).
SERVERS = {
    "lesson-01": (ROOT, "code/lesson01/step5_shutdown.py"),  # the last step; STEP=K picks step K
    "lesson-01-production": (ROOT, "code/lesson01/production_api.py"),
    "research-agent": (ROOT / "research-agent", "main.py"),
    "lesson-02": (ROOT / "research-agent", "main.py"),  # make lesson-02 runs make research-agent
    "lesson-04": (ROOT, "code/lesson04/step4_api.py"),  # the last step; STEP=K picks step K
    "lesson-04-production": (ROOT, "code/lesson04/sandboxed_tools.py"),
}
# Servers that need Docker and a built image: their documented commands run with the container
# checks (marker `container`, `make sandbox-test`), not in `make test`.
NEEDS_DOCKER = {"lesson-04", "lesson-04-production"}


# --- Reading Markdown -----------------------------------------------------------------------------


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    marks: dict = field(
        default_factory=dict
    )  # from the HTML comment just above: {"server": "lesson-01"}

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(`{3,})\s*([\w-]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence = opening.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == fence), len(lines))
        marks = {}
        comment = re.match(r"^<!--\s*([\w-]+)\s*:?\s*(.*?)\s*-->\s*$", lines[i - 1]) if i else None
        if comment:
            marks[comment.group(1)] = comment.group(2)
        found.append(
            Block(doc, i + 1, opening.group(2).lower(), "\n".join(lines[i + 1 : end]), marks)
        )
        i = end + 1
    return found


def shell_blocks(docs: list[Path]) -> list[Block]:
    return [b for doc in docs for b in blocks(doc) if b.lang in SHELL_LANGS]


def commands(block: Block) -> list[str]:
    """The command lines of a shell block: continuations joined, comments and prompts removed."""
    joined = re.sub(r"\\\n\s*", " ", block.body)
    result = []
    for line in joined.splitlines():
        line = re.sub(r"^\$\s+", "", line.strip())
        line = re.sub(r"\s+#.*$", "", line) if not line.startswith("#") else ""
        if line:
            result.append(line)
    return result


def make_targets() -> set[str]:
    text = makefile_text()
    return {
        m.group(1) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", text, flags=re.M)
    }


def make_goals(command: str) -> list[str] | None:
    """The targets of a `make` command line (after VAR=value prefixes); None for other commands."""
    words = command.split()
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    if not words or words[0] != "make":
        return None
    return [w for w in words[1:] if not w.startswith("-") and "=" not in w]


# --- 1. Excerpts ----------------------------------------------------------------------------------


def test_there_are_docs_with_excerpts():
    assert DOCS, "docs/ has no Markdown files"
    assert sum(len(docs_sync.find_excerpts(d)) for d in DOCS) >= 10


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_include_names_a_file_and_symbol_that_exist(doc):
    _, broken = docs_sync.sync_doc(doc, write=False)
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_excerpts_match_their_files(doc):
    stale, _ = docs_sync.sync_doc(doc, write=False)
    assert not stale, (
        "\n".join(stale)
        + "\nRun `python scripts/docs_sync.py` and review the doc around each excerpt."
    )


def test_check_mode_exits_0_on_the_repository():
    result = subprocess.run(
        [sys.executable, "scripts/docs_sync.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


SAMPLE = '''"""A module."""
import functools

LIMIT = 3


@functools.cache
def square(x):
    return x * x


class Box:
    size: int = 1

    def grow(self):
        self.size += 1
        # still growing


if __name__ == "__main__":
    print(square(LIMIT))
'''


@pytest.fixture
def sample_repo(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(SAMPLE)
    (tmp_path / "Dockerfile").write_text('FROM scratch\n# [start:run]\nCMD ["run"]\n# [end:run]\n')
    return tmp_path


EXTRACTS = {
    "pkg/mod.py#square": "@functools.cache\ndef square(x):\n    return x * x",
    "pkg/mod.py#LIMIT": "LIMIT = 3",
    "pkg/mod.py#Box.grow": "def grow(self):\n    self.size += 1\n    # still growing",
    "pkg/mod.py#__main__": 'if __name__ == "__main__":\n    print(square(LIMIT))',
    "Dockerfile#run": 'CMD ["run"]',
    "Dockerfile": 'FROM scratch\nCMD ["run"]',  # the markers are the script's, not the reader's
}


@pytest.mark.parametrize("target", EXTRACTS)
def test_extract_selects_symbols_with_decorators_methods_and_markers(sample_repo, target):
    assert docs_sync.extract(target, sample_repo) == EXTRACTS[target]


def test_no_excerpt_shows_an_include_marker(sample_repo):
    """A selection that contains another excerpt's markers (a whole file, a class around a marked
    method, a marked region around a marked region) shows none of them."""
    (sample_repo / "pkg" / "marked.py").write_text(
        "class Middleware:\n"
        "    def call(self):\n"
        "        # [start:inner]\n"
        "        def send(message):\n"
        "            return message\n"
        "            # [end:inner]\n"
        "        return send\n"
    )
    (sample_repo / "page.html").write_text(
        "<script>\n// # [start:outer]\nconst a = 1;\n// # [start:inner]\nconst b = 2;\n"
        "// # [end:inner]\n// # [end:outer]\n</script>\n"
    )
    extract = docs_sync.extract
    assert extract("pkg/marked.py#Middleware", sample_repo) == (
        "class Middleware:\n    def call(self):\n        def send(message):\n"
        "            return message\n        return send"
    )
    assert extract("pkg/marked.py#inner", sample_repo) == "def send(message):\n    return message"
    assert extract("page.html#outer", sample_repo) == "const a = 1;\nconst b = 2;"
    assert "[start:" not in extract("page.html", sample_repo)


def test_no_rendered_excerpt_in_the_docs_contains_a_marker():
    shown = [
        f"{docs_sync._rel(e.doc)}:{e.line}: {e.spec}"
        for doc in DOCS
        for e in docs_sync.find_excerpts(doc)
        if re.search(r"\[(start|end):[^\]\s]+\]", e.body)
    ]
    assert not shown, "excerpts that show an include marker:\n" + "\n".join(shown)


def test_extract_with_a_count_takes_the_next_symbols_too(sample_repo):
    extract = docs_sync.extract
    assert extract("pkg/mod.py#LIMIT+1", sample_repo).startswith("LIMIT = 3\n\n\n@functools.cache")


@pytest.mark.parametrize(
    "spec",
    [
        "pkg/missing.py",
        "pkg/mod.py#cube",
        "pkg/mod.py#Box.shrink",
        "Dockerfile#build",
        "../outside.py",
    ],
)
def test_extract_refuses_what_does_not_exist(sample_repo, spec):
    with pytest.raises(docs_sync.IncludeError):
        docs_sync.extract(spec, sample_repo)


def test_a_changed_file_makes_its_excerpt_stale_until_synced(sample_repo):
    doc = sample_repo / "doc.md"
    doc.write_text("Intro\n\n<!-- include: pkg/mod.py#square -->\n```python\nold\n```\n\nEnd\n")
    stale, broken = docs_sync.sync_doc(doc, sample_repo, write=False)
    assert stale == [f"{doc}:3: pkg/mod.py#square is stale"] and not broken
    assert "old" in doc.read_text()  # --check changes nothing

    docs_sync.sync_doc(doc, sample_repo, write=True)
    assert doc.read_text() == (
        "Intro\n\n<!-- include: pkg/mod.py#square -->\n```python\n@functools.cache\n"
        "def square(x):\n"
        "    return x * x\n```\n\nEnd\n"
    )
    assert docs_sync.sync_doc(doc, sample_repo, write=False) == ([], [])


def test_a_missing_symbol_is_reported_and_nothing_is_written(sample_repo):
    doc = sample_repo / "doc.md"
    text = (
        "<!-- include: pkg/mod.py#gone -->\n```python\nx\n```\n"
        "<!-- include: pkg/mod.py#LIMIT -->\n```python\n```\n"
    )
    doc.write_text(text)
    stale, broken = docs_sync.sync_doc(doc, sample_repo, write=True)
    assert broken and "pkg/mod.py#gone" in broken[0]
    assert doc.read_text() == text


def test_an_include_diff_shows_what_the_next_step_adds(sample_repo):
    (sample_repo / "pkg" / "mod2.py").write_text(
        SAMPLE.replace("    return x * x", "    # NEW: logged\n    print(x)\n    return x * x")
    )
    doc = sample_repo / "doc.md"
    doc.write_text("<!-- include-diff: pkg/mod.py#square  pkg/mod2.py#square -->\n```diff\n```\n")
    stale, broken = docs_sync.sync_doc(doc, sample_repo, write=True)
    assert len(stale) == 1 and not broken
    assert doc.read_text() == (
        "<!-- include-diff: pkg/mod.py#square  pkg/mod2.py#square -->\n```diff\n"
        "--- pkg/mod.py#square\n+++ pkg/mod2.py#square\n@@ -1,3 +1,5 @@\n"
        " @functools.cache\n def square(x):\n+    # NEW: logged\n+    print(x)\n     return x * x\n"
        "```\n"
    )
    assert docs_sync.sync_doc(doc, sample_repo, write=False) == ([], [])
    (sample_repo / "pkg" / "mod2.py").write_text(SAMPLE.replace("x * x", "x**2"))
    assert docs_sync.sync_doc(doc, sample_repo, write=False)[0]  # the next step changed: stale


def test_an_include_diff_writes_a_blank_context_line_as_an_empty_line(sample_repo):
    (sample_repo / "pkg" / "mod2.py").write_text(SAMPLE.replace("LIMIT = 3", "LIMIT = 4"))
    diff = docs_sync.extract_diff("pkg/mod.py pkg/mod2.py", sample_repo).split("\n")
    assert "-LIMIT = 3" in diff and "+LIMIT = 4" in diff and "" in diff
    assert not [line for line in diff if line.strip() == "" and line]


def test_an_include_diff_that_ends_in_blank_context_lines_stays_in_sync(sample_repo):
    """Blank lines after the last change: the diff's last context lines are blank, and one sync
    writes every one of them (a second sync finds nothing stale)."""
    (sample_repo / "pkg" / "a.py").write_text("A = 1\n\n\n\nB = 2\n")
    (sample_repo / "pkg" / "b.py").write_text("A = 2\n\n\n\nB = 2\n")
    doc = sample_repo / "doc.md"
    doc.write_text("<!-- include-diff: pkg/a.py pkg/b.py -->\n```diff\n```\n")
    assert docs_sync.extract_diff("pkg/a.py pkg/b.py", sample_repo).endswith("+A = 2\n\n\n")
    assert docs_sync.sync_doc(doc, sample_repo, write=True)[0]
    assert docs_sync.sync_doc(doc, sample_repo, write=False) == ([], [])


def test_a_whole_file_diff_leaves_the_module_docstrings_change_out(sample_repo):
    """Each step's docstring names the step: between two whole files only the code's change shows,
    and the new docstring stays as context near it."""
    step2 = SAMPLE.replace('"""A module."""', '"""Step 2.\n\nRun it: make step-2\n"""')
    (sample_repo / "pkg" / "mod2.py").write_text(
        step2.replace("import functools", "import os\nimport functools")
    )
    diff = docs_sync.extract_diff("pkg/mod.py pkg/mod2.py", sample_repo).split("\n")
    assert "+import os" in diff and "Run it: make step-2" in [line.strip() for line in diff]
    assert not [line for line in diff if line.startswith(("-", "+")) and "module" in line.lower()]
    assert not [line for line in diff if line.startswith("+") and "Step 2" in line]
    # A selection of a symbol is diffed as it is: its docstring is part of what changed.
    (sample_repo / "pkg" / "mod2.py").write_text(
        SAMPLE.replace("def square(x):", 'def square(x):\n    """Squared."""')
    )
    assert '+    """Squared."""' in docs_sync.extract_diff(
        "pkg/mod.py#square pkg/mod2.py#square", sample_repo
    )


def test_an_include_diff_of_identical_sides_is_broken(sample_repo):
    doc = sample_repo / "doc.md"
    doc.write_text("<!-- include-diff: pkg/mod.py#square pkg/mod.py#square -->\n```diff\n```\n")
    _, broken = docs_sync.sync_doc(doc, sample_repo, write=False)
    assert broken and "nothing differs" in broken[0]


# --- 2 and 3. Commands ----------------------------------------------------------------------------


def test_make_lines_name_real_targets():
    targets, wrong = make_targets(), []
    for block in shell_blocks(DOCS + [ROOT / "README.md"]):
        for command in commands(block):
            goals = make_goals(command)
            if goals is not None:
                wrong += [f"{block.where()}: make {g}" for g in goals if g not in targets]
    assert not wrong, "no such Makefile target:\n" + "\n".join(wrong)


def test_every_shell_block_in_docs_is_run_or_checked():
    unchecked = []
    targets = make_targets()
    for block in shell_blocks(DOCS):
        if "server" in block.marks:
            assert block.marks["server"].split()[0] in SERVERS, (
                f"{block.where()}: unknown server {block.marks['server']}"
            )
            continue
        if "checked-by" in block.marks:
            by = block.marks["checked-by"]
            goals = make_goals(by)
            if goals is not None:
                assert goals and all(g in targets for g in goals), (
                    f"{block.where()}: {by} is not a make target"
                )
            else:
                assert (ROOT / by).is_file(), (
                    f"{block.where()}: checked-by names {by}, which does not exist"
                )
            continue
        if not all(make_goals(c) is not None for c in commands(block)):
            unchecked.append(block.where())
    assert not unchecked, (
        "these shell blocks are neither make targets, nor run by this test"
        " (<!-- server: TARGET -->), nor marked "
        "<!-- checked-by: make TARGET | tests/... -->:\n" + "\n".join(unchecked)
    )


def test_an_expected_output_block_is_compared():
    """`<!-- expected-output -->` promises that a test compares the block with what the command
    printed, which only a `server:` block's output is: any other output block is plain text."""
    unchecked = []
    for doc in DOCS:
        found = blocks(doc)
        for before, block in zip([None, *found], found, strict=False):
            if "expected-output" in block.marks and not (before and "server" in before.marks):
                unchecked.append(block.where())
    assert not unchecked, (
        "expected-output blocks that follow no <!-- server: --> block, so nothing compares"
        " them:\n" + "\n".join(unchecked)
    )


# --- 4. Running the documented commands against a real server -------------------------------------


def doc_sessions() -> list[tuple[Path, str, list[tuple[Block, Block]]]]:
    """Per doc and server: the (command, expected output) pairs, in the order of the doc."""
    sessions = {}
    for doc in DOCS:
        found = blocks(doc)
        for i, block in enumerate(found):
            if block.lang in SHELL_LANGS and "server" in block.marks:
                expected = found[i + 1] if i + 1 < len(found) else None
                assert expected is not None and "expected-output" in expected.marks, (
                    f"{block.where()}: a server block must be followed by an"
                    " <!-- expected-output --> block"
                )
                sessions.setdefault((doc, block.marks["server"]), []).append((block, expected))
    return [(doc, server, pairs) for (doc, server), pairs in sessions.items()]


def start_server(server_process, target: str):
    """The server a doc's commands run against, as `make TARGET` starts it, on a free port."""
    name, *assignments = target.split()  # e.g. <!-- server: research-agent SEARCH_MAX_RESULTS=2 -->
    cwd, script = SERVERS[name]
    settings = dict(assignment.partition("=")[::2] for assignment in assignments)
    if "STEP" in settings:  # <!-- server: lesson-02 STEP=2 -->: make lesson-02 STEP=2's file
        cwd, script = ROOT, str(step_file(name.removeprefix("lesson-"), settings.pop("STEP")))
    settings.setdefault("OFFLINE_TOKEN_DELAY_MS", "0")
    return server_process([sys.executable, script], cwd=cwd, **settings)


def run_against(port: int, command: str) -> str:
    # The doc says port 8000; the server listens on a free port: output naming it maps back.
    command = re.sub(r"\b(localhost|127\.0\.0\.1):8000\b", rf"\1:{port}", command)
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return re.sub(rf"\b(localhost|127\.0\.0\.1):{port}\b", r"\1:8000", result.stdout)


def match_json(expected, actual, path="$") -> list[str]:
    if expected == "...":
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems = (
            [f"{path}: keys {sorted(expected)} != {sorted(actual)}"]
            if set(expected) != set(actual)
            else []
        )
        for key in expected.keys() & actual.keys():
            if key not in VOLATILE_KEYS:
                problems += match_json(expected[key], actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        if expected and expected[-1] == "...":
            expected, actual = expected[:-1], actual[: len(expected) - 1]
        if len(expected) != len(actual):
            return [f"{path}: {len(actual)} items, the doc shows {len(expected)}"]
        return [
            p
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for p in match_json(e, a, f"{path}[{i}]")
        ]
    return [] if expected == actual else [f"{path}: {actual!r}, the doc shows {expected!r}"]


def normalise(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").strip("\n").split("\n")]


def compare(expected: str, actual: str) -> list[str]:
    try:
        wanted = json.loads(expected)
    except ValueError:
        wanted = None
    if wanted is not None:
        try:
            got = json.loads(actual)
        except ValueError:
            return [f"expected JSON, got:\n{actual}"]
        return match_json(wanted, got)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    if printed_as_shown(expected, actual):
        return []
    return [f"output differs from the doc:\n--- doc\n{expected}\n--- actual\n{actual}"]


SESSIONS = doc_sessions()


def session_id(target: str) -> str:
    """`lesson-02 STEP=2 X=1` -> `lesson-02-step2`: the server, and the step when there is one."""
    name, *assignments = target.split()
    step = [a.partition("=")[2] for a in assignments if a.startswith("STEP=")]
    return f"{name}-step{step[0]}" if step else name


def session_param(doc: Path, target: str, pairs: list) -> pytest.param:
    marks = [pytest.mark.container] if target.split()[0] in NEEDS_DOCKER else []
    return pytest.param(doc, target, pairs, marks=marks, id=f"{doc.name}:{session_id(target)}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the documented commands use curl")
@pytest.mark.parametrize("doc, target, pairs", [session_param(*s) for s in SESSIONS])
def test_documented_commands_print_the_documented_output(server_process, doc, target, pairs):
    server = start_server(server_process, target)
    for command, expected in pairs:
        problems = compare(expected.body, run_against(server.port, command.body))
        assert not problems, f"{command.where()}: `{command.body}`\n" + "\n".join(problems)


def test_there_are_commands_run_against_each_lesson_server():
    targets = {t.split()[0] for _, t, _ in SESSIONS}
    assert {"lesson-01", "lesson-01-production"} <= targets, targets
    assert {"lesson-02", "research-agent"} & targets, targets  # one server, two names


def test_the_index_names_the_lessons_whose_commands_are_run():
    """docs/index.md says which lessons' commands are run and compared: exactly those with a
    `server:` block, so a lesson that gains (or loses) them cannot leave the sentence wrong."""
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    trust = section(index, "Can I trust what the docs show?")
    bullet = re.search(
        r"^- \*\*Commands run and compared\.\*\*(.*?)(?=^- \*\*)", trust, re.M | re.S
    )
    assert bullet, "docs/index.md has no 'Commands run and compared' bullet"
    named = {t for t in link_targets(bullet[1]) if re.fullmatch(r"\d\d-.*\.md", t)}
    assert named == {doc.name for doc, _, _ in SESSIONS}


def test_the_research_agent_doc_lists_every_setting():
    # Every variable of the service's one class but the OTEL_* ones, which lesson 09 lists.
    from research_agent.settings import TracingSettings, variables

    names = sorted(set(variables()) - set(TracingSettings.model_fields))
    doc = (ROOT / "docs" / "02-research-agent.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([A-Z_0-9]+)` \|", doc, flags=re.M))
    assert len(names) > 10 and not set(names) - rows, (
        f"missing from the configuration table: {set(names) - rows}"
    )


# --- 5. Links, anchors and tables (scripts/docs_links.py), and the core path's length -----------

LINKED_PAGES = docs_links.default_files(ROOT)


def test_the_link_check_covers_the_readmes_and_every_doc():
    names = {str(p.relative_to(ROOT)) for p in LINKED_PAGES}
    assert {"README.md", "CONTRIBUTING.md", "research-agent/README.md"} <= names
    assert {str(d.relative_to(ROOT)) for d in DOCS} <= names


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings_that_exist(page):
    report = docs_links.check([page], ROOT)
    assert not report.broken, "\n".join(report.broken)


def test_the_link_check_counts_what_it_checked():
    result = subprocess.run(
        [sys.executable, "scripts/docs_links.py"], cwd=ROOT, capture_output=True, text=True
    )
    counted = re.search(
        r"checked (\d+) relative links, (\d+) of them with an #anchor", result.stdout
    )
    assert counted and int(counted[1]) > 100 and int(counted[2]) > 20, result.stdout


# A file of the repository named with a line number: `Makefile:62`, `research_agent/api.py:12`,
# `x.py#L12`.
LINE_REFERENCE = re.compile(
    r"\b(?:Makefile|Dockerfile[\w.]*|[\w./-]+\.(?:py|ya?ml|cfg|md|sh|toml|txt|html|json|in))"
    r"(?::\d+\b|#L\d+)"
)


def line_references(text: str) -> list[str]:
    return [m.group(0) for m in LINE_REFERENCE.finditer(text)]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_quotes_a_line_number_of_a_file(page):
    """Line numbers go stale with the next edit above them: quote the lines by an include marker,
    name the definition, or write `...` for the number in a program's output."""
    assert line_references(page.read_text(encoding="utf-8")) == []


def test_the_line_number_check_finds_the_usual_forms():
    text = (
        "make: *** [Makefile:62: lesson-01-shutdown] Terminated; see research_agent/api.py:12 and\n"
        "[the route](../code/01_basic_api.py#L40). Not: localhost:8000, redis:7,\n"
        "python:3.11-slim, [Makefile:...: lesson-01-shutdown],\n"
        "`docs/03-containers.md#the-shutdown-budget`."
    )
    assert line_references(text) == [
        "Makefile:62",
        "research_agent/api.py:12",
        "code/01_basic_api.py#L40",
    ]


LINK_SAMPLE = """# Lesson 09 · Containers’ limits

See [the steps](#step-1-build-it), [the second run](#run-it-1)
and [limits](#lesson-09--containers-limits).
Jump to [the marker](#custom-spot) or [the other page](other.md#a-heading-with-code-and-_under_).
Not links: `[x](missing.md)` and

```markdown
[y](also-missing.md#nowhere)
```

## Step 1: build it

### Run it

### Run it

<a id="custom-spot"></a>
"""


@pytest.fixture
def link_pages(tmp_path):
    (tmp_path / "other.md").write_text("## A heading with `code` and _under_\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(LINK_SAMPLE, encoding="utf-8")
    return tmp_path, page


def test_github_slugs_drop_punctuation_and_number_repeated_headings(link_pages):
    _, page = link_pages
    assert docs_links.anchors(LINK_SAMPLE) == {
        "lesson-09--containers-limits",
        "step-1-build-it",
        "run-it",
        "run-it-1",
        "custom-spot",
    }


def test_good_links_pass_and_code_is_not_checked(link_pages):
    root, page = link_pages
    report = docs_links.check([page], root)
    assert report.broken == [] and (report.links, report.anchors) == (5, 5)


@pytest.mark.parametrize(
    "link, problem",
    [
        ("[gone](#run-it-2)", "#run-it-2: no such heading or anchor"),
        ("[gone](other.md#a-heading)", "other.md#a-heading: no such heading or anchor"),
        ("[gone](#lesson-09-·-containers’-limits)", "no such heading or anchor"),
        ("[gone](missing.md)", "missing.md: no such file"),
    ],
)
def test_a_broken_link_or_anchor_fails_and_is_named(link_pages, link, problem):
    root, page = link_pages
    page.write_text(LINK_SAMPLE + f"\nAnd {link}.\n", encoding="utf-8")
    report = docs_links.check([page], root)
    assert len(report.broken) == 1 and problem in report.broken[0], report.broken
    assert report.broken[0].startswith("page.md:")


def test_a_table_split_by_a_blank_line_fails(tmp_path):
    whole = "| a | b |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |\n"
    split = "| a | b |\n| --- | --- |\n| 1 | 2 |\n\n| 3 | 4 |\n"
    assert docs_links.split_tables(whole) == []
    assert docs_links.split_tables(split) == [5]
    assert docs_links.split_tables("```\n| not | a table |\n```\n") == []
    (tmp_path / "page.md").write_text(split, encoding="utf-8")
    assert "split by a blank line" in docs_links.check([tmp_path / "page.md"], tmp_path).broken[0]


LESSONS = docs_words.lessons(ROOT)


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda d: d.name)
def test_each_lesson_core_path_is_within_its_word_limit(lesson):
    words = docs_words.count_words(docs_words.core_path(lesson.read_text(encoding="utf-8")))
    limit = docs_words.limit_for(lesson)
    assert words <= limit, (
        f"{lesson.name}: the core path (above '## Going further') has {words} words of prose,"
        f" the limit is {limit}: move deeper material below '## Going further'"
    )


def test_every_lesson_has_the_same_word_limit_steps_or_not(tmp_path):
    (tmp_path / "code").mkdir()
    doc = tmp_path / "docs" / "07-x.md"
    assert docs_words.limit_for(doc, tmp_path) == docs_words.LIMIT == 1200
    (tmp_path / "code" / "07_step1_first.py").write_text("")
    assert docs_words.limit_for(doc, tmp_path) == docs_words.STEPPED_LIMIT == 1200
    assert docs_words.limit_for(tmp_path / "docs" / "08-y.md", tmp_path) == 1200


WORDS_SAMPLE = """# Lesson 09 · Five words here

Two words: [a link](https://example.com/not/counted).

```python
print("code is not prose")
```

| a table | is read too |
| --- | ---: |

<!-- include: neither is a comment -->
<details>
<summary>Nor a folded solution</summary>

Hidden words.
</details>

## Going further

Nothing below the heading counts.
"""


def test_the_word_count_reads_only_the_core_path_prose():
    core = docs_words.core_path(WORDS_SAMPLE)
    assert "Nothing below" not in core
    # "Lesson 09 Five words here" (5) + "Two words a link" (4) + the table's cells (5); the
    # heading line is prose, the table's `| --- |` row is not.
    assert docs_words.count_words(core) == 14
    assert docs_words.count_words(WORDS_SAMPLE.replace("## Going further", "## Later")) == 20


def test_a_long_table_counts_toward_the_core_path():
    row = "| `network_mode` | calling home, sending data out | DNS and TCP fail |\n"
    table = "| Flag | Stops | Shown by |\n| --- | --- | --- |\n" + row * 100
    assert docs_words.count_words(table) == 4 + 100 * 10


def test_the_word_count_script_exits_1_over_the_limit(tmp_path):
    doc = tmp_path / "09-sample.md"
    doc.write_text(WORDS_SAMPLE, encoding="utf-8")
    script = [sys.executable, "scripts/docs_words.py"]
    ok = subprocess.run([*script, str(doc)], cwd=ROOT, capture_output=True, text=True)
    over = subprocess.run(
        [*script, "--limit", "13", str(doc)], cwd=ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0 and over.returncode == 1
    assert "09-sample.md" in over.stderr and "OVER" in over.stdout


# --- 6. The course map: every lesson is on it, and each lesson's Next link leads to the next ------


def section(text: str, heading: str) -> str:
    """The lines of a `## heading` section, up to the next `## ` heading ("" if there is none)."""
    match = re.search(rf"^## {re.escape(heading)}\s*$", text, flags=re.M)
    if not match:
        return ""
    end = re.search(r"^## ", text[match.end() :], flags=re.M)
    return text[match.end() : match.end() + end.start()] if end else text[match.end() :]


def link_targets(text: str) -> set[str]:
    return {target.partition("#")[0] for _, target in docs_links.links(text)}


def next_links(lesson: Path) -> list[str]:
    """The first link of each `Next:` line of a lesson's core path, anchor included."""
    core = docs_words.core_path(lesson.read_text(encoding="utf-8"))
    found = []
    for line in core.splitlines():
        if line.startswith("Next:"):
            targets = [target for _, target in docs_links.links(line)]
            found.append(targets[0] if targets else "")
    return found


def course_map_problems(root: Path) -> list[str]:
    """Each lesson docs/NN-*.md missing from the README's course map, the index's course map or
    its reading order, and each lesson whose core path has no single `Next:` line pointing at the
    next lesson (for the last one: at the course map, index.md)."""
    lessons = docs_words.lessons(root)
    readme = (root / "README.md").read_text(encoding="utf-8")
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    places = {
        "README.md's course map": (link_targets(section(readme, "Course map")), "docs/"),
        "docs/index.md's course map": (link_targets(section(index, "Course map")), ""),
        "docs/index.md's reading order": (link_targets(section(index, "Reading order")), ""),
    }
    problems = []
    for lesson in lessons:
        for place, (targets, prefix) in places.items():
            if prefix + lesson.name not in targets:
                problems.append(f"{lesson.name} is not linked from {place}")
    for lesson, following in zip(lessons, [*lessons[1:], None], strict=True):
        wanted = {following.name} if following else {"index.md", "index.md#course-map"}
        found = next_links(lesson)
        if len(found) != 1 or found[0] not in wanted:
            problems.append(
                f"{lesson.name}: its core path must have one `Next:` line, linking"
                f" {' or '.join(sorted(wanted))}; found {found or 'none'}"
            )
    return problems


def test_every_lesson_is_on_the_course_map_and_leads_to_the_next():
    assert len(LESSONS) >= 9
    assert course_map_problems(ROOT) == []


def write_course(root: Path, lessons: dict[str, str]) -> None:
    """A sample course: README and index listing `lessons` ({file: Next target})."""
    (root / "docs").mkdir(exist_ok=True)
    rows = "".join(f"| [{n}](docs/{n}) |\n" for n in lessons)
    (root / "README.md").write_text(
        f"# C\n\n## Course map\n\n| Read |\n| --- |\n{rows}\n## Tests\n"
    )
    items = "".join(f"1. [{n}]({n})\n" for n in lessons)
    (root / "docs" / "index.md").write_text(
        f"# C\n\n## Course map\n\n{items}\n## Reading order\n\n{items}\n## What you need\n"
    )
    for name, target in lessons.items():
        (root / "docs" / name).write_text(
            f"# {name}\n\nText.\n\nNext: [the next one]({target})\n\n## Going further\n\n"
            "Next: [not the core path](elsewhere.md)\n"
        )


def test_the_course_map_check_holds_a_new_lesson_to_it(tmp_path):
    course = {"01-a.md": "02-b.md", "02-b.md": "index.md"}
    write_course(tmp_path, course)
    assert course_map_problems(tmp_path) == []

    # A lesson 03 nobody linked, while lesson 02 still ends the course.
    (tmp_path / "docs" / "03-c.md").write_text("# C\n\nNext: [map](index.md#course-map)\n")
    assert course_map_problems(tmp_path) == [
        "03-c.md is not linked from README.md's course map",
        "03-c.md is not linked from docs/index.md's course map",
        "03-c.md is not linked from docs/index.md's reading order",
        "02-b.md: its core path must have one `Next:` line, linking 03-c.md; found ['index.md']",
    ]
    write_course(tmp_path, {**course, "02-b.md": "03-c.md", "03-c.md": "index.md#course-map"})
    assert course_map_problems(tmp_path) == []


@pytest.mark.parametrize(
    "last_line, found",
    [
        ("Next: [Lesson 01 again](01-a.md)", "['01-a.md']"),
        ("See you.", "none"),
        ("Next: [map](index.md)\n\nNext: [map](index.md)", "['index.md', 'index.md']"),
    ],
)
def test_a_last_lesson_that_does_not_lead_to_the_course_map_fails(tmp_path, last_line, found):
    write_course(tmp_path, {"01-a.md": "02-b.md", "02-b.md": "index.md"})
    (tmp_path / "docs" / "02-b.md").write_text(f"# B\n\n{last_line}\n")
    assert course_map_problems(tmp_path) == [
        "02-b.md: its core path must have one `Next:` line, linking index.md or"
        f" index.md#course-map; found {found}"
    ]
