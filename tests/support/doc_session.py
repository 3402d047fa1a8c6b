"""A doc's commands typed into one terminal, in order, and what they print compared with the doc.

A section of a lesson doc shows shell blocks, each usually followed by a ```text (or ```json)
block of what it prints. `section_steps()` pairs them. `Terminal` is one bash process that runs
the blocks one after another, so a variable one block sets (`RUN=$(curl ...)`) is there for the
next, as in the learner's terminal. `differences()` compares what a block printed with the doc:
line by line, a line `...` standing for any lines and `...` inside a line for any characters (the
rule tests/repo/test_docs.py applies to `expected-output` blocks).
"""

import queue
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.doc_output import printed_as_shown

SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(`{3,})\s*([\w-]*)")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    mark: str  # the HTML comment just above it, or ""


def section_blocks(doc: Path, heading: str) -> list[Block]:
    """The fenced blocks of the section whose heading starts with `heading`: a `## ` section, or
    one of any level when `heading` starts with its #s ("### 4."). The section ends at the next
    heading of its level or above."""
    prefix = heading if heading.startswith("#") else f"## {heading}"
    level = len(prefix) - len(prefix.lstrip("#"))
    lines = doc.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    ends = tuple("#" * n + " " for n in range(1, level + 1))
    found, i = [], start + 1
    while i < len(lines) and not lines[i].startswith(ends):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == opening[1])
        mark = re.match(r"^<!--\s*(.*?)\s*-->$", lines[i - 1])
        found.append(
            Block(i + 1, opening[2].lower(), "\n".join(lines[i + 1 : end]), mark[1] if mark else "")
        )
        i = end + 1
    return found


def section_steps(doc: Path, heading: str) -> list[tuple[Block, Block | None]]:
    """Each shell block of the section, with the block of output that follows it (or None)."""
    blocks = section_blocks(doc, heading)
    steps = []
    for i, block in enumerate(blocks):
        if block.lang in SHELL:
            after = blocks[i + 1] if i + 1 < len(blocks) else None
            steps.append((block, after if after and after.lang not in SHELL else None))
    return steps


def differences(expected: str, actual: str) -> str:
    """'' when `actual` is what the doc shows, else both, to read side by side."""
    if printed_as_shown(expected, actual):
        return ""
    return f"--- the doc shows\n{expected}\n--- printed\n{actual}"


class Terminal:
    """One bash, its output and errors read together: `run(commands)` returns what they printed."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        # A learner's shell, not a make's: a `make` typed in it prints no "Entering directory"
        # lines because the test itself runs under `make pubsub-test` (MAKELEVEL, MAKEFLAGS).
        env = {k: v for k, v in env.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.folder = Path(tempfile.mkdtemp(prefix="terminal-"))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")  # bash has exited

    def run(self, commands: str, timeout: float = 120) -> tuple[str, int]:
        """Type `commands`; what they printed and the status of the last one."""
        marker = f"__done_{uuid.uuid4().hex}__"
        # Sourced from a file, with no input: a command that reads its input (`docker compose
        # exec`) would otherwise read the lines typed after it. A newline before the marker: output
        # that does not end with one (curl's JSON) ends before it.
        script = self.folder / f"{marker}.sh"
        script.write_text(commands + "\n")
        self.process.stdin.write(f"source {script} < /dev/null\nprintf '\\n{marker} %s\\n' $?\n")
        self.process.stdin.flush()
        printed = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no end after {timeout} s:\n{''.join(printed)}") from None
            if not line:
                raise RuntimeError(f"bash exited:\n{''.join(printed)}")
            if line.startswith(marker):
                text = "".join(printed)
                return text[:-1] if text.endswith("\n") else text, int(line.split()[1])
            printed.append(line)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
