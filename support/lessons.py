"""The one loader of the course's numbered lesson scripts (code/NN_*.py).

A lesson script's name starts with a digit (`01_step1_api.py`), the name the docs and `make
lesson-NN` use: no `import` statement can name it, so tests load it by its path here, with
importlib. Everything a lesson imports is an installed package (lesson01, lesson05, lesson07,
research_agent...), found by name: this loads the script itself and nothing else, and changes no
path."""

import importlib.util
import itertools
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT_DIR = ROOT / "research-agent"  # lesson 02 on: the research agent (research_agent package)
_fresh = itertools.count()
LESSON_SCRIPT = re.compile(r"code/\d\d_\w+\.py")
STEP_GLOB = "{lesson}_step[0-9]_*.py"  # code/02_step1_agent.py: lesson 02, step 1


def step_files(lesson: str, root: Path = ROOT) -> list[Path]:
    """A lesson's steps in order (`code/NN_stepK_what.py`); none for a lesson without steps."""
    return sorted((root / "code").glob(STEP_GLOB.format(lesson=lesson)))


def step_file(lesson: str, step: int | str, root: Path = ROOT) -> Path:
    """Lesson NN's step K, the file `make lesson-NN STEP=K` runs."""
    found = [p for p in step_files(lesson, root) if p.name.startswith(f"{lesson}_step{step}_")]
    if len(found) != 1:
        raise LookupError(f"lesson {lesson} has no single step {step}: {[p.name for p in found]}")
    return found[0]


def load_lesson(relpath: str, name: str | None = None):
    """Import ROOT/relpath, a numbered lesson script. Without `name`, a fresh module on every call,
    so that its module-level settings read the environment as it is now; with `name`, one module
    shared by every caller."""
    if not LESSON_SCRIPT.fullmatch(relpath):
        raise ValueError(f"{relpath} is not a lesson script (code/NN_name.py): import it by name")
    if name in sys.modules:
        return sys.modules[name]
    name = name or f"lesson_{Path(relpath).stem}_{next(_fresh)}"
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def dockerignore_allow_list(folder: Path) -> list[str]:
    """What folder/.dockerignore lets into the build context when it is an allow-list (`*`, then
    one `!name` line a file or folder): those names, without a trailing slash."""
    lines = (folder / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]
