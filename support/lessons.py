"""Where the course's lessons are, and how tests import them: by name, never by path.

Lesson NN lives in one folder, code/lessonNN/, a package the editable install maps by name
(pyproject.toml): its steps (`code/lesson01/step1_api.py`, the module `lesson01.step1_api`, run with
`python -m lesson01.step1_api`), its production versions, its helper modules, its Compose files and
Dockerfile. A step imports the step before it by name (`from lesson02 import step3_limits`)."""

import importlib
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
AGENT_DIR = ROOT / "research-agent"  # lesson 02 on: the research agent (research_agent package)
STEP_GLOB = "step[0-9]_*.py"  # code/lesson02/step1_agent.py: lesson 02, step 1


def lesson_dir(lesson: str, root: Path = ROOT) -> Path:
    """Lesson NN's folder, code/lessonNN/."""
    return root / "code" / f"lesson{lesson}"


def step_files(lesson: str, root: Path = ROOT) -> list[Path]:
    """A lesson's steps in order (code/lessonNN/stepK_what.py); none for a lesson without steps."""
    return sorted(lesson_dir(lesson, root).glob(STEP_GLOB))


def step_file(lesson: str, step: int | str, root: Path = ROOT) -> Path:
    """Lesson NN's step K, the file `make lesson-NN STEP=K` runs."""
    found = [p for p in step_files(lesson, root) if p.name.startswith(f"step{step}_")]
    if len(found) != 1:
        raise LookupError(f"lesson {lesson} has no single step {step}: {[p.name for p in found]}")
    return found[0]


def module_name(path: str | Path) -> str:
    """The import name of a lesson file: code/lesson05/step1_worker.py -> lesson05.step1_worker."""
    path = Path(path)
    if path.is_absolute():
        if not path.is_relative_to(ROOT):
            raise ValueError(f"{path} is not a file of a lesson's folder (code/lessonNN/)")
        path = path.relative_to(ROOT)
    parts = PurePosixPath(path.as_posix()).with_suffix("").parts
    if len(parts) < 3 or parts[0] != "code" or not parts[1].startswith("lesson"):
        raise ValueError(f"{path} is not a file of a lesson's folder (code/lessonNN/)")
    return ".".join(parts[1:])


def run_module(path: str | Path) -> list[str]:
    """How to run a lesson file as a program: `python -m lessonNN.name`. A file outside the
    lessons' folders (a test's changed copy of a step) runs by its path, as a script."""
    try:
        return ["-m", module_name(path)]
    except ValueError:
        return [str(path)]


def import_lesson(name: str, fresh: bool = True):
    """Import a lesson's module by name (`lesson05.variations_api`, or its path). With `fresh`, a
    new module, and new copies of the lesson's steps it imports, so that their module-level
    settings read the environment as it is now; without, the one module every caller shares."""
    if "/" in name or name.endswith(".py"):
        name = module_name(name)
    if fresh:
        package = name.split(".")[0]
        for loaded in [n for n in sys.modules if n == name or n.startswith(f"{package}.step")]:
            del sys.modules[loaded]
            parent, _, child = loaded.rpartition(".")
            if hasattr(sys.modules.get(parent), child):  # `from lesson02 import step3` reads it
                delattr(sys.modules[parent], child)
    return importlib.import_module(name)


def makefile_text(root: Path = ROOT) -> str:
    """The course's make targets and variables: the root Makefile, then each lesson's lesson.mk
    (code/lessonNN/lesson.mk), which it includes."""
    files = [root / "Makefile", *sorted((root / "code").glob("lesson*/lesson.mk"))]
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def dockerignore_allow_list(folder: Path) -> list[str]:
    """What folder/.dockerignore lets into the build context when it is an allow-list (`*`, then
    one `!name` line a file or folder): those names, without a trailing slash."""
    lines = (folder / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]
