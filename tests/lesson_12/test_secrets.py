"""Lesson 12's tokens (the callers' file and the planner's token), as `make lesson-12` writes them:
in a folder that only you can enter, so that no other user of the machine reads a token."""

import stat
import subprocess

from support.lessons import ROOT


def test_make_writes_the_tokens_where_no_other_user_reads_them(tmp_path):
    folder = tmp_path / "secrets"
    made = subprocess.run(
        ["make", "-s", f"LESSON12_SECRETS={folder}", f"{folder}/callers"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("callers", "planner-token"):  # read by the containers' user through the mount
        assert stat.S_IMODE((folder / name).stat().st_mode) & 0o022 == 0
    names = {line.split()[0] for line in (folder / "callers").read_text().splitlines()}
    assert names == {"planner", "bob"}
    planner = (folder / "planner-token").read_text().strip()
    assert f"planner {planner}" in (folder / "callers").read_text()
