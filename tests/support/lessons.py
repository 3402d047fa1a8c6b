"""A lesson script's name starts with a digit (`01_basic_api.py`): `import` cannot load it."""

import importlib.util
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "research-agent"  # lesson 02 on: the research agent, its `app` package
_fresh = itertools.count()


def load_lesson(relpath: str, name: str | None = None):
    """Import ROOT/relpath. Without `name`, a fresh module on every call, so that its module-level
    settings read the environment as it is now; with `name`, one module shared by every caller."""
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


def use_research_agent() -> None:
    """Make research-agent/'s `app` package importable for a benchmark run as `python -m bench.x`
    (pytest has it on its `pythonpath`; the image runs from that folder)."""
    path = str(AGENT_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
