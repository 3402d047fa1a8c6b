"""`make lint`'s configuration checks (scripts/config_checks.py), run on copies of the course's own
files: one bad line in a Dockerfile, a manifest and a Compose file turns each tool red on that line
and nowhere else (the tree itself, without them, is what `make lint` checks). The copies keep their
paths, so the findings kept on purpose (the inline skips, .trivyignore.yaml, .compose-lint.yml)
stay kept: a change to the tools' settings or to those files that lets a bad line through, or
that fails a good one, fails here. One run: each loads its rules for several seconds of CPU."""

from pathlib import Path

import pytest

from scripts import config_checks

ROOT = Path(__file__).resolve().parents[2]
K8S = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "code" / "lesson06" / "k8s").glob("*.yaml"))
FILES = [
    "research-agent/Dockerfile",  # the basic image: root on purpose, its findings kept
    "research-agent/Dockerfile.optimized",
    "research-agent/docker-compose.yml",
    *K8S,  # all of them: checkov's NetworkPolicy check looks across the files
]
# One line each, and what each tool must say about it.
BAD = {
    "research-agent/Dockerfile.optimized": ("STOPSIGNAL SIGTERM\n", "USER root\n"),
    "code/lesson06/k8s/agent-deployment.yaml": (
        "            allowPrivilegeEscalation: false\n",
        "            privileged: true\n",
    ),
    "research-agent/docker-compose.yml": (
        "      dockerfile: Dockerfile.optimized\n",
        "    privileged: true\n",
    ),
}
EXPECTED = {
    ("trivy config", "DS-0002", "research-agent/Dockerfile.optimized"),  # the last USER is root
    ("trivy config", "KSV-0017", "code/lesson06/k8s/agent-deployment.yaml"),  # privileged: true
    ("checkov", "CKV_DOCKER_8", "research-agent/Dockerfile.optimized"),
    ("checkov", "CKV_K8S_16", "code/lesson06/k8s/agent-deployment.yaml"),
    ("compose-lint", "CL-0002", "research-agent/docker-compose.yml"),  # privileged: true
}


MISSING = [name for name, path in config_checks.tools().items() if not path]
needs_tools = pytest.mark.skipif(
    bool(MISSING), reason=f"{MISSING} not installed (make install installs them)"
)


def copy_tree(to: Path) -> None:
    for name in FILES:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / name).read_text()
        if name in BAD:
            anchor, line = BAD[name]
            assert text.count(anchor) == 1, f"{name} changed: put the bad line somewhere else"
            text = text.replace(anchor, anchor + line)
        (to / name).write_text(text)


def check(tree: Path, capsys) -> tuple[int, str]:
    """The checks over FILES in TREE, as `make lint` runs them (tools, settings, kept findings)."""
    code = config_checks.main(["--root", str(tree), *FILES])
    return code, capsys.readouterr().out


def failures(output: str) -> set[tuple[str, str, str]]:
    found, tool = set(), ""
    for line in output.splitlines():
        if not line.startswith(" "):
            tool = line.split(":")[0]
        elif line.startswith("  FAIL "):
            rule, _, where = line.split()[1:4]
            found.add((tool, rule, where.split(":")[0]))
    return found


@needs_tools
def test_one_bad_line_turns_each_tool_red_there_and_nowhere_else(tmp_path, capsys):
    copy_tree(tmp_path)
    code, output = check(tmp_path, capsys)
    assert code == 1, output
    assert "ERROR" not in output, output
    found = failures(output)
    # Each tool sees its bad line...
    assert found >= EXPECTED, output
    # ...and nothing but the bad lines fails (checkov has more than one check per bad line).
    assert {where for _, _, where in found} == set(BAD), output
    # The basic image's root user is kept on purpose, and said so, with the reason.
    kept = [line for line in output.splitlines() if line.startswith("  kept")]
    assert any("DS-0002 in research-agent/Dockerfile:" in line for line in kept), output
    assert any("CKV_DOCKER_3 in research-agent/Dockerfile:" in line for line in kept), output


def test_files_are_found_by_what_they_are():
    kinds = config_checks.classify(ROOT, config_checks.tracked(ROOT))
    assert "research-agent/Dockerfile.optimized" in kinds["dockerfile"]
    assert "code/lesson06/k8s/networkpolicy.yaml" in kinds["manifest"]
    # Compose files whatever their name: a Swarm stack and lesson 08's replicas are Compose too.
    assert {"code/lesson06/swarm/stack.yml", "code/lesson08/replicas.yaml"} <= set(kinds["compose"])
    assert "code/lesson08/catalog.yaml" not in sum(kinds.values(), [])
    assert not [name for name in sum(kinds.values(), []) if name.startswith(".github/")]


def test_lint_runs_the_configuration_checks():
    lint = (ROOT / "scripts" / "lint.sh").read_text()
    assert '"$bin/python" -m scripts.config_checks' in lint
