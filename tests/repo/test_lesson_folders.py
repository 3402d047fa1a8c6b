"""A lesson in one folder: everything lesson NN runs (its steps, production versions, Compose files,
Dockerfile, make targets) lives in code/lessonNN/, a package imported by name, and no lesson file is
loaded by its path. What a lesson folder keeps and git ignores (secrets, tokens) never enters a
build context."""

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from support.lessons import ROOT, makefile_text

LESSONS = [f"{n:02d}" for n in range(1, 13)]
# Where the lessons' files were before each lesson had its folder.
OLD_FOLDERS = [ROOT / "deploy", *(ROOT / "docker").glob("lesson*")]


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in out.stdout.splitlines() if (ROOT / name).exists()]


def lesson_of(name: str) -> str | None:
    """The lesson whose folder holds a file: code/lesson07/compose.yaml is lesson 07's."""
    if match := re.match(r"code/lesson(\d\d)/", name):
        return match[1]
    return None


@pytest.mark.parametrize("lesson", LESSONS)
def test_each_lesson_is_a_folder_and_a_package_with_its_make_targets(lesson):
    folder = ROOT / "code" / f"lesson{lesson}"
    assert (folder / "__init__.py").is_file()
    make = (folder / "lesson.mk").read_text(encoding="utf-8")
    assert f"##@ Lesson {lesson}" in make
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert (
        f'"lesson{lesson}"' in pyproject and f'lesson{lesson} = "code/lesson{lesson}"' in pyproject
    )


def test_no_numbered_file_and_no_old_lesson_folder_remains():
    names = tracked()
    assert [n for n in names if re.match(r"code/\d\d_", n)] == []
    assert [n for n in names if re.match(r"(deploy|docker/lesson\d\d)/", n)] == []
    left = [
        p for folder in OLD_FOLDERS if folder.exists() for p in folder.rglob("*") if p.is_file()
    ]
    assert left == []


def test_every_step_lives_in_its_lessons_folder():
    steps = [n for n in tracked() if re.search(r"(^|/)(\d\d_)?step\d_\w+\.py$", n)]
    assert steps, "no step found"
    outside = [n for n in steps if not re.fullmatch(r"code/lesson\d\d/step\d_\w+\.py", n)]
    assert outside == []


def build_files() -> dict[str, list[str]]:
    """The Dockerfiles and Compose files the lessons' make targets name, by lesson."""
    found: dict[str, list[str]] = {}
    for lesson in LESSONS:
        make = (ROOT / "code" / f"lesson{lesson}" / "lesson.mk").read_text(encoding="utf-8")
        names = re.findall(
            r"-f (\S+/(?:Dockerfile\S*|[\w.-]*compose[\w.-]*\.ya?ml|stack\.yml))", make
        )
        found[lesson] = sorted(set(names))
    return found


def test_a_lessons_dockerfiles_and_compose_files_are_in_its_folder():
    # Lesson 03 and 09 build on the research agent's own Compose file, research-agent/: the app's.
    shared = {"research-agent/docker-compose.yml"}
    wrong = {
        lesson: [n for n in names if n not in shared and lesson_of(n) != lesson]
        for lesson, names in build_files().items()
    }
    assert {lesson: names for lesson, names in wrong.items() if names} == {}
    assert build_files()["07"] == ["code/lesson07/Dockerfile", "code/lesson07/compose.yaml"]


def test_swarm_and_kubernetes_are_lesson_06s():
    assert (ROOT / "code" / "lesson06" / "swarm" / "stack.yml").is_file()
    assert sorted((ROOT / "code" / "lesson06" / "k8s").glob("*.yaml"))


def made_by_make(path: Path) -> bool:
    """A file make writes before Compose runs (a token, a callers' list): git ignores it."""
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, check=False)
    return ignored.returncode == 0


def test_the_compose_files_build_and_mount_what_exists():
    """Every build context, Dockerfile and bind mount a lesson's Compose file names is there, read
    from the file's own folder (Compose's rule), as make runs it."""
    missing = []
    for name in tracked():
        if not re.fullmatch(r"code/lesson\d\d/[\w./-]*\.ya?ml", name):
            continue
        documents = list(yaml.safe_load_all((ROOT / name).read_text(encoding="utf-8")))
        if len(documents) != 1 or not isinstance(documents[0], dict):
            continue
        document = documents[0]
        if "services" not in document:
            continue
        # A Compose file given after another one (-f a -f b) reads paths from the first's folder.
        base = ROOT / (
            "research-agent" if name.endswith("compose.traces.yaml") else Path(name).parent
        )
        for service in document["services"].values():
            build = service.get("build")
            if isinstance(build, str):
                build = {"context": build}
            if build:
                context = (base / build.get("context", ".")).resolve()
                if not context.is_dir():
                    missing.append(f"{name}: context {build.get('context')}")
                elif "dockerfile" in build and not (context / build["dockerfile"]).is_file():
                    missing.append(f"{name}: dockerfile {build['dockerfile']}")
            for volume in service.get("volumes", []):
                source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
                relative = source and source.startswith(".") and "$" not in source
                if relative and not (base / source).exists() and not made_by_make(base / source):
                    missing.append(f"{name}: volume {source}")
    assert missing == []


def python_files() -> list[Path]:
    roots = ["code", "support", "tests", "bench", "scripts", "research-agent"]
    return [ROOT / n for n in tracked() if n.endswith(".py") and n.split("/")[0] in roots]


# support/zygote.py stands in for the interpreter itself (`python script.py`, `python -m module`
# forked from a process that imported the heavy libraries): it sets sys.path as python would.
INTERPRETER = {"support/zygote.py"}
# This file names what it looks for.
SELF = Path(__file__).resolve()


def path_loads(path: Path) -> list[str]:
    """What in a Python file loads code by path or edits sys.path."""
    text = path.read_text(encoding="utf-8")
    found = [word for word in ("load_lesson", "spec_from_file_location") if word in text]
    tree = ast.parse(text)
    for node in ast.walk(tree):
        target = node.func if isinstance(node, ast.Call) else None
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute):
            inner = target.value
            if (
                isinstance(inner.value, ast.Name)
                and inner.value.id == "sys"
                and inner.attr == "path"
                and target.attr in ("insert", "append", "extend")
            ):
                found.append(f"sys.path.{target.attr}")
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                t = t.value if isinstance(t, ast.Subscript) else t
                if ast.unparse(t) == "sys.path":
                    found.append("sys.path =")
    return found


def test_nothing_loads_a_lesson_by_path_or_edits_sys_path():
    found = {
        str(p.relative_to(ROOT)): loads
        for p in python_files()
        if p.resolve() != SELF
        and str(p.relative_to(ROOT)) not in INTERPRETER
        and (loads := path_loads(p))
    }
    assert found == {}


def test_the_check_sees_a_path_load_and_a_sys_path_edit(tmp_path):
    # The sample's text is put together here, so that no file of the repository holds a path
    # edit, not even as a string that a search for one would find.
    edit = "sys." + "path"
    sample = tmp_path / "x.py"
    sample.write_text(
        f"import sys\n{edit}.insert(0, 'code')\n{edit}[:] = []\n"
        "from importlib.util import spec_from_file_location\n"
    )
    assert sorted(path_loads(sample)) == ["spec_from_file_location", f"{edit} =", f"{edit}.insert"]


def test_the_makefile_includes_every_lesson_in_course_order():
    make = subprocess.run(
        ["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    groups = re.findall(
        r"Lesson (\d\d)", "\n".join(line for line in make.stdout.splitlines() if "\033[1m" in line)
    )
    assert groups == LESSONS
    assert len((ROOT / "Makefile").read_text(encoding="utf-8").splitlines()) <= 250
    assert makefile_text().count("##@ Lesson") == len(LESSONS)


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_dockerignore_lets_in_whole_lesson_folders_and_keeps_their_secrets_out():
    rules = dockerignore()
    allowed = [r for r in rules if r.startswith("!code/")]
    folders = [r for r in allowed if r != "!code/chat_model.py"]
    assert folders and all(re.fullmatch(r"!code/lesson\d\d/", r) for r in folders), folders
    last_allow = max(i for i, r in enumerate(rules) if r.startswith("!"))
    excluded = rules[last_allow + 1 :]
    assert "**/secrets" in excluded and "**/.env" in excluded
    # What git ignores in a lesson's folder (its generated secrets) is excluded after the allows.
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("code/")
    ]
    assert ignored
    missing = [
        name
        for name in ignored
        if name not in excluded and not (name.endswith("/secrets") and "**/secrets" in excluded)
    ]
    assert missing == []


def copy_sources(dockerfile: Path) -> list[str]:
    """What each COPY of a Dockerfile takes from its build context (not from another stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        if any(word.startswith("--from") for word in words):
            continue
        sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def test_every_dockerfile_copies_files_that_exist():
    """A lesson's image is built from the repository's root (code/lessonNN/Dockerfile), lesson 03's
    from research-agent/, a shared image from its own folder in docker/: each COPY names files that
    are there, so a file moved or renamed fails here before an image build does."""
    missing = []
    for dockerfile in (
        sorted(ROOT.glob("code/lesson*/Dockerfile*"))
        + sorted(ROOT.glob("research-agent/Dockerfile*"))
        + sorted(ROOT.glob("docker/*/Dockerfile*"))
    ):
        if dockerfile.parent.name == "proxy-ca":
            continue  # built in a folder scripts/trust-proxy-ca.sh makes, with the CA it is given
        context = ROOT if dockerfile.parts[-3] == "code" else dockerfile.parent
        for source in copy_sources(dockerfile):
            wild = any(c in source for c in "*?[")
            if not (list(context.glob(source)) if wild else (context / source).exists()):
                missing.append(f"{dockerfile.relative_to(ROOT)}: {source}")
    assert not missing, missing
