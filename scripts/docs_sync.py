"""Keep the code excerpts in docs/ identical to the files they come from.

An excerpt is an HTML comment followed at once by a fenced code block:

    <!-- include: code/lesson01/step1_api.py#lifespan -->
    ```python
    ...rewritten by this script...
    ```

What the include selects (paths are relative to the repository root):

    PATH                the whole file
    PATH#name           Python: the top-level def, class or assignment `name`, decorators included
    PATH#Class.method   Python: one method (dedented)
    PATH#name+N         Python: `name` and the N top-level statements that follow it
    PATH#__main__       Python: the `if __name__ == "__main__":` block
    PATH#name           any other file (Dockerfile, YAML, Makefile): the lines between the comment
                        markers `# [start:name]` and `# [end:name]`, markers excluded

The markers are for this script, not for the reader: a line that holds only a marker (`# [start:x]`,
`// # [end:x]`) is left out of every excerpt, whatever it selects, so a whole file or a class that
contains another excerpt's markers shows none of them.

A diff between two such selections (a lesson step against the one before) works the same way:

    <!-- include-diff: code/lesson01/step1_api.py#invoke code/lesson01/step4_errors.py#invoke -->
    ```diff
    ...the unified diff of the two, rewritten by this script...
    ```

Between two whole Python files the module docstring's change is left out (each step's names the
step and its command); the new file's docstring still shows as context near a change.

Usage:
    python scripts/docs_sync.py           rewrite every excerpt from its source
    python scripts/docs_sync.py --check   change nothing; exit 1, listing each stale or broken one
"""

import argparse
import ast
import contextlib
import difflib
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

INCLUDE = re.compile(r"^<!--\s*include:\s*(?P<spec>\S+)\s*-->\s*$")
INCLUDE_DIFF = re.compile(r"^<!--\s*include-diff:\s*(?P<spec>\S+\s+\S+)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`]*)$")
# A line that is only an include marker, after the comment leader of its file (#, //, --, ;).
MARKER_LINE = re.compile(r"^\s*(?:(?://|--|;)\s*)?#\s*\[(?:start|end):[^\]\s]+\]\s*$")


class IncludeError(Exception):
    """The include names a file or a symbol that does not exist."""


@dataclass
class Excerpt:
    doc: Path
    line: int  # 1-based line of the include comment
    spec: str
    start: int  # 0-based index of the opening fence line
    end: int  # 0-based index of the closing fence line
    info: str  # the fence's info string, e.g. "python"
    body: str  # what the doc holds now
    diff: bool = False  # an include-diff: spec is "OLD NEW"


def find_excerpts(doc: Path) -> list[Excerpt]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    excerpts, i = [], 0
    while i < len(lines):
        match = INCLUDE.match(lines[i]) or INCLUDE_DIFF.match(lines[i])
        if not match:
            i += 1
            continue
        opening = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not opening:
            raise IncludeError(
                f"{_rel(doc)}:{i + 1}: an include comment must be followed at once by a code fence"
            )
        fence = opening["fence"]
        end = next((j for j in range(i + 2, len(lines)) if lines[j].rstrip() == fence), None)
        if end is None:
            raise IncludeError(f"{_rel(doc)}:{i + 2}: this code fence is never closed")
        body = "\n".join(lines[i + 2 : end])
        diff = match.re is INCLUDE_DIFF
        spec = " ".join(match["spec"].split())
        excerpts.append(Excerpt(doc, i + 1, spec, i + 1, end, opening["info"], body, diff))
        i = end + 1
    return excerpts


def extract(spec: str, root: Path = ROOT) -> str:
    """The text an include selects, without a trailing newline and without marker lines."""
    path_text, _, symbol = spec.partition("#")
    path = (root / path_text).resolve()
    if not path.is_file() or root.resolve() not in path.parents:
        raise IncludeError(f"{path_text}: no such file in the repository")
    source = path.read_text(encoding="utf-8")
    if not symbol:
        return without_markers(source).rstrip("\n")
    if path.suffix == ".py" and not re.search(rf"#\s*\[start:{re.escape(symbol)}\]", source):
        return without_markers(_python_symbol(source, symbol, path_text))
    return without_markers(_marked_lines(source, symbol, path_text))


def without_markers(text: str) -> str:
    """The text without the lines that are only an include marker."""
    return "\n".join(line for line in text.split("\n") if not MARKER_LINE.match(line))


def _docstring_lines(source: str) -> tuple[int, int] | None:
    """The [start, end) line indexes of a Python module's docstring, if it has one."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
        return first.lineno - 1, first.end_lineno
    return None


def extract_diff(spec: str, root: Path = ROOT) -> str:
    """The unified diff from the first selection of "OLD NEW" to the second.

    Between two whole Python files (a step against the one before), the module docstring's change
    is left out: each step's docstring names the step and its command, which every diff would
    otherwise show as a change that teaches nothing. The new file's docstring stands on both sides,
    so it still shows as context where a change is near it."""
    old, new = spec.split()
    before, after = extract(old, root).splitlines(), extract(new, root).splitlines()
    if "#" not in old and "#" not in new and old.endswith(".py") and new.endswith(".py"):
        was, now = _docstring_lines("\n".join(before)), _docstring_lines("\n".join(after))
        if was and now:
            before = before[: was[0]] + after[now[0] : now[1]] + before[was[1] :]
    diff = difflib.unified_diff(
        before,
        after,
        fromfile=old,
        tofile=new,
        lineterm="",
    )
    # A blank context line is written empty, not as " ": Markdown linters take that for trailing
    # whitespace.
    text = "\n".join(line if line.strip() else "" for line in diff)
    if not text:
        raise IncludeError(f"{old} and {new}: nothing differs")
    return text


def _python_symbol(source: str, symbol: str, path_text: str) -> str:
    tree = ast.parse(source)
    lines = source.splitlines()
    name, plus, extra = symbol.partition("+")
    following = int(extra) if plus and extra.isdigit() else 0
    if plus and not extra.isdigit():
        raise IncludeError(f"{path_text}#{symbol}: after '+' comes a number of statements")

    if name == "__main__":
        found = [i for i, node in enumerate(tree.body) if _is_main_guard(node)]
        body, index = tree.body, found[0] if found else None
    elif "." in name:
        class_name, method = name.split(".", 1)
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
        body = classes[0].body if classes else []
        index = next((i for i, node in enumerate(body) if method in _names(node)), None)
    else:
        body = tree.body
        index = next((i for i, node in enumerate(body) if name in _names(node)), None)
    if index is None:
        raise IncludeError(f"{path_text}#{symbol}: no such top-level definition")
    if index + following >= len(body):
        raise IncludeError(f"{path_text}#{symbol}: fewer than {following} statements follow {name}")

    first, last = body[index], body[index + following]
    start = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
    end = last.end_lineno
    # A comment that closes an indented body (after a final `yield`, say) belongs to the excerpt.
    indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
    while (
        end < len(lines)
        and lines[end].lstrip().startswith("#")
        and len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    return textwrap.dedent("\n".join(lines[start - 1 : end]))


def _names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and "__main__" in ast.unparse(node.test)
        and "__name__" in ast.unparse(node.test)
    )


def _marked_lines(source: str, name: str, path_text: str) -> str:
    lines = source.splitlines()
    start_marker = re.compile(rf"#\s*\[start:{re.escape(name)}\]\s*$")
    end_marker = re.compile(rf"#\s*\[end:{re.escape(name)}\]\s*$")
    start = next((i for i, line in enumerate(lines) if start_marker.search(line)), None)
    if start is None:
        raise IncludeError(f"{path_text}#{name}: no '# [start:{name}]' marker in the file")
    end = next((i for i in range(start + 1, len(lines)) if end_marker.search(lines[i])), None)
    if end is None:
        raise IncludeError(f"{path_text}#{name}: '# [start:{name}]' has no '# [end:{name}]'")
    # Blank lines at either end (a formatter may want one before a marker) are not the excerpt's.
    return textwrap.dedent("\n".join(lines[start + 1 : end])).strip("\n")


def _rel(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _fence_for(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    return "`" * max(3, longest + 1)


def sync_doc(doc: Path, root: Path = ROOT, write: bool = True) -> tuple[list[str], list[str]]:
    """Rewrite a doc's excerpts (when write is true). Returns (stale excerpts, broken includes)."""
    stale, broken = [], []
    try:
        excerpts = find_excerpts(doc)
    except IncludeError as exc:
        return [], [str(exc)]
    lines = doc.read_text(encoding="utf-8").splitlines()
    for excerpt in reversed(excerpts):  # from the bottom up, so earlier line numbers stay valid
        try:
            wanted = (extract_diff if excerpt.diff else extract)(excerpt.spec, root)
        except IncludeError as exc:
            broken.append(f"{_rel(doc)}:{excerpt.line}: {exc}")
            continue
        if wanted != excerpt.body:
            stale.append(f"{_rel(doc)}:{excerpt.line}: {excerpt.spec} is stale")
            fence = _fence_for(wanted)
            lines[excerpt.start : excerpt.end + 1] = [
                fence + excerpt.info,
                # split, not splitlines: a diff may end in blank context lines, each one a line
                *wanted.split("\n"),
                fence,
            ]
    if write and stale and not broken:
        doc.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sorted(stale), sorted(broken)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if an excerpt is stale"
    )
    parser.add_argument(
        "docs", nargs="*", type=Path, help="Markdown files (default: every docs/*.md)"
    )
    args = parser.parse_args(argv)
    docs = args.docs or sorted(DOCS.rglob("*.md"))
    all_stale, all_broken, count = [], [], 0
    for doc in docs:
        with contextlib.suppress(IncludeError):  # reported by sync_doc below
            count += len(find_excerpts(doc))
        stale, broken = sync_doc(doc.resolve(), write=not args.check)
        all_stale += stale
        all_broken += broken
    for problem in all_broken:
        print(f"BROKEN  {problem}", file=sys.stderr)
    if args.check:
        for problem in all_stale:
            print(f"STALE   {problem}", file=sys.stderr)
        if all_stale:
            print(
                "Run `python scripts/docs_sync.py` to rewrite the excerpts from the code.",
                file=sys.stderr,
            )
        if all_stale or all_broken:
            return 1
        print(f"{count} excerpts in {len(docs)} docs match their files.")
        return 0
    for problem in all_stale:
        print(f"updated {problem.removesuffix(' is stale')}")
    if all_broken:
        return 1
    print(f"{count} excerpts in {len(docs)} docs are in sync.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
