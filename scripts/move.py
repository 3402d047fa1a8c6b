"""Move files with `git mv` and rewrite every reference to them across the repository.

The map file holds one move a line, `OLD NEW` (blank lines and `#` comments skipped). OLD is a
tracked file, or a folder: then every tracked file under it moves to the same place under NEW.
After the moves, every tracked text file is rewritten:

    OLD as a path           code/05_step1_worker.py -> code/lesson05/step1_worker.py, and a
                            folder as a prefix (deploy/lesson08/compose.yaml ->
                            code/lesson08/compose.yaml), relative spellings too
                            (../deploy/lesson09/ingest.cfg)
    OLD as path segments    "code" / "05_step1_worker.py" -> "code" / "lesson05" / "step1_worker.py"
    python PATH             a moved Python file run by path, when it lands in a package folder
                            (code/lessonNN/): python code/lesson05/step1_worker.py
                            -> python -m lesson05.step1_worker

The map file and this script are left as they are. Names alone (a moved file's name without its
folder) are listed, not rewritten: what they become depends on where they stand. Relative paths
inside a moved file that moves deeper or shallower are not rewritten either: the script lists the
moved files that hold one.

Usage:
    python -m scripts.move --map scripts/lesson-folders.map [--dry-run]
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
# A path token's edges: no letter, digit, underscore or dash right before or after it.
BEFORE = r"(?<![\w-])"
AFTER = r"(?![\w-])"
PACKAGE_FOLDER = re.compile(r"code/(lesson\d\d)/(\w+)\.py")


def read_map(path: Path) -> list[tuple[str, str]]:
    moves = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SystemExit(f"{path}:{number}: expected OLD NEW, got {line!r}")
        moves.append((parts[0].rstrip("/"), parts[1].rstrip("/")))
    return moves


def tracked(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def file_moves(moves: list[tuple[str, str]], files: list[str]) -> dict[str, str]:
    """Each tracked file that moves, OLD -> NEW; a folder's move expanded file by file."""
    present = set(files)
    result: dict[str, str] = {}
    for old, new in moves:
        if old in present:
            result[old] = new
            continue
        under = [name for name in files if name.startswith(old + "/")]
        if not under:
            raise SystemExit(f"{old}: neither a tracked file nor a folder with tracked files")
        for name in under:
            result[name] = new + name[len(old) :]
    targets: dict[str, str] = {}
    for old, new in result.items():
        if new in targets or (new in present and new not in result):
            raise SystemExit(f"{old} -> {new}: {new} is taken")
        targets[new] = old
    return result


def literal(text: str):
    return lambda match: text


def rules(moves: list[tuple[str, str]], files: dict[str, str]) -> list:
    """The textual rewrites, longest OLD first so that a file's own rule wins over its folder's."""
    found = []
    for old, new in sorted(moves, key=lambda move: -len(move[0])):
        found.append((re.compile(BEFORE + re.escape(old) + AFTER), literal(new)))
        old_parts, new_parts = PurePosixPath(old).parts, PurePosixPath(new).parts
        segments = r"\s*/\s*".join(f'"{re.escape(part)}"' for part in old_parts)
        joined = " / ".join(f'"{part}"' for part in new_parts)
        found.append((re.compile(segments), literal(joined)))
    # python code/lessonNN/name.py -> python -m lessonNN.name, for the moved Python files only.
    moved_py = sorted(
        {new for new in files.values() if PACKAGE_FOLDER.fullmatch(new)}, key=lambda n: -len(n)
    )
    for new in moved_py:
        package, name = PACKAGE_FOLDER.fullmatch(new).groups()
        runner = r"((?:\S*[pP][yY][tT][hH][oO][nN][\d.]*\)?|\$\(PY\))\s+)"
        module = f"-m {package}.{name}"
        found.append(
            (re.compile(runner + re.escape(new) + AFTER), lambda m, to=module: m.group(1) + to)
        )
    return found


def rewrite(text: str, found: list) -> str:
    for pattern, replacement in found:
        text = pattern.sub(replacement, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", required=True, type=Path, help="the OLD NEW file")
    parser.add_argument("--dry-run", action="store_true", help="print the moves, change nothing")
    args = parser.parse_args(argv)
    moves = read_map(args.map)
    files = tracked(ROOT)
    plan = file_moves(moves, files)
    for old, new in plan.items():
        print(f"git mv {old} {new}")
    if args.dry_run:
        return 0
    for old, new in plan.items():
        (ROOT / new).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "mv", old, new], cwd=ROOT, check=True)
    found = rules(moves, plan)
    skipped = {args.map.resolve(), Path(__file__).resolve()}
    changed = []
    for name in tracked(ROOT):
        path = ROOT / name
        if path.resolve() in skipped or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode()
        except UnicodeDecodeError:
            continue
        new_text = rewrite(text, found)
        if new_text != text:
            path.write_text(new_text)
            changed.append(name)
    print(f"rewrote references in {len(changed)} files")
    # What is left for a reader: bare names of moved files, and moved files that hold a relative
    # path while their depth changed.
    # Only names that change: a Dockerfile or compose.yaml that moves keeps its name.
    names = {
        PurePosixPath(old).name: new
        for old, new in plan.items()
        if PurePosixPath(old).name != PurePosixPath(new).name
    }
    bare = re.compile(BEFORE + r"(?<!/)(" + "|".join(map(re.escape, names)) + ")" + AFTER)
    if not names:
        bare = re.compile(r"(?!)")
    for name in tracked(ROOT):
        path = ROOT / name
        if path.resolve() in skipped or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in bare.finditer(line):
                print(f"{name}:{number}: bare name {match.group(1)} (now {names[match.group(1)]})")
    for old, new in plan.items():
        if len(PurePosixPath(old).parts) == len(PurePosixPath(new).parts):
            continue
        text = (ROOT / new).read_text(errors="replace")
        if "../" in text:
            print(f"{new}: moved to another depth and holds a relative path (../): check it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
