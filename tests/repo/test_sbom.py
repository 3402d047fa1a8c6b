"""`make sbom` (scripts/sbom.py): an SBOM read from an image by syft, named by the image's id, kept
while the image is, replaced when it is rebuilt; the comparison of two images' packages; and the
vulnerability scan docs/03 shows, which says it cannot scan where it cannot reach its database."""

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from scripts import sbom
from tests.support.docker_cli import build_env

ROOT = Path(__file__).resolve().parents[2]

DPKG_STATUS = """\
Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell

Package: gcc-12
Status: install ok installed
Architecture: amd64
Version: 12.2.0-14
Description: GNU C compiler
"""


def docker_works() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def build(context: Path, tag: str, built: list[str]) -> str:
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        check=True,
        capture_output=True,
        timeout=300,
        env=build_env(),
    )
    built.append(sbom.docker("image", "inspect", tag, "--format", "{{.Id}}"))
    return built[-1]


@pytest.fixture
def tiny_image(tmp_path):
    """An image from scratch holding only a dpkg database (bash, gcc-12) and one Python package's
    metadata: what syft reads, in a few kB."""
    if not docker_works():
        pytest.skip("no Docker engine answers `docker info`: syft reads images from it")
    context = tmp_path / "context"
    (context / "var/lib/dpkg").mkdir(parents=True)
    (context / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    dist = context / "usr/lib/python3/dist-packages/demo-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    (dist / "RECORD").write_text("")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY var /var\nCOPY usr /usr\n")
    tag, built = f"course-sbom-test:{secrets.token_hex(4)}", []
    yield context, tag, built
    subprocess.run(["docker", "rmi", "-f", tag, *built], capture_output=True, timeout=60)


def test_an_sbom_is_read_from_the_image_named_by_its_id_and_replaced_when_it_is_rebuilt(
    tiny_image, tmp_path, capsys
):
    context, tag, built = tiny_image
    first = build(context, tag, built)
    out = tmp_path / "sbom"
    assert sbom.main([tag, "--out", str(out)]) == 0
    path = out / sbom.file_name(tag, first)
    document = json.loads(path.read_text())
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    props = {p["name"]: p["value"] for p in document["metadata"]["component"]["properties"]}
    assert props["docker:image:id"] == first and props["docker:image:tag"] == tag
    packages = sbom.read_packages(path)
    assert sorted(packages) == [
        ("deb", "bash", "5.2.15-2+b2"),
        ("deb", "gcc-12", "12.2.0-14"),
        ("python", "demo", "1.0"),
    ]
    assert f"| `{tag}` |  | 0 | 2 | 1 | 0 | 3 |" in capsys.readouterr().out

    # The same image again: its SBOM is kept, not read again.
    written = path.stat().st_mtime_ns
    assert sbom.main([tag, "--out", str(out)]) == 0
    assert path.stat().st_mtime_ns == written

    # Rebuilt with another package: a new file, and the old one is gone.
    (context / "var/lib/dpkg/status").write_text(
        DPKG_STATUS + "\nPackage: dash\nStatus: install ok installed\nVersion: 0.5.12-2\n"
    )
    second = build(context, tag, built)
    assert second != first
    assert sbom.main([tag, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [sbom.file_name(tag, second)]


def test_an_image_that_is_not_built_is_named_with_what_builds_it(tmp_path, capsys):
    if not docker_works():
        pytest.skip("no Docker engine answers `docker info`")
    assert sbom.main(["course-sbom-test:never-built", "--out", str(tmp_path)]) == 1
    assert "not built, so no SBOM: course-sbom-test:never-built" in capsys.readouterr().out


def image(tag: str, size: int, packages: list[tuple[str, str, str]]) -> sbom.Image:
    return sbom.Image(tag, "", id="sha256:" + "0" * 64, size=size, packages=packages)


def test_the_comparison_says_what_the_optimized_image_dropped():
    base = [("deb", "bash", "5.2"), ("deb", "dash", "0.5"), ("deb", "apt", "2.6")]
    basic = image(
        "basic",
        500_000_000,
        base
        + [("deb", "gcc-12", "12.2"), ("deb", "gcc-12-base", "12.2")]
        + [("python", "pip", "23.0"), ("python", "setuptools", "84.2"), ("python", "x", "1")],
    )
    optimized = image("optimized", 352_000_000, base + [("python", "x", "1")])
    table = "\n".join(sbom.comparison_table(basic, optimized))
    assert "| size MB | 500 | 352 | 148 |" in table
    assert "| OS packages (deb) | 5 | 3 | gcc-12-base==12.2, gcc-12==12.2 |" in table
    assert "| Python packages | 3 | 1 | pip==23.0, setuptools==84.2 |" in table
    # gcc-12-base is a library's files, not a compiler.
    assert "| compilers and linkers | gcc-12 | none | gcc-12 |" in table
    assert "| shells | bash, dash | bash, dash | none |" in table
    assert "| package managers | apt, pip | apt | pip |" in table
    assert table.endswith("In the optimized image and not in the basic one: none.")


def test_the_scan_lesson_03_shows_stops_without_its_database_and_reports_nothing(tmp_path):
    """docs/03's `trivy image` command as typed, its database out of reach (a closed port on
    loopback stands in for the network the course's build machine lacks, so the test downloads
    nothing anywhere): it fails saying why and prints no table: nothing reads as a clean scan."""
    doc = (ROOT / "docs" / "03-containers.md").read_text(encoding="utf-8")
    block = doc.split("<!-- checked-by: tests/repo/test_sbom.py -->\n```bash\n", 1)[1]
    command = block.split("\n```", 1)[0].strip()
    assert command.startswith(".venv/bin/trivy image "), command
    if not (ROOT / ".venv" / "bin" / "trivy").exists():
        pytest.skip("no .venv/bin/trivy: make install installs it")
    result = subprocess.run(
        command,
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "TRIVY_CACHE_DIR": str(tmp_path),
            "TRIVY_DB_REPOSITORY": "127.0.0.1:9/trivy-db",
            "TRIVY_DISABLE_TELEMETRY": "true",
            "TRIVY_SKIP_VERSION_CHECK": "true",
        },
    )
    assert result.returncode != 0, result.stdout
    assert "failed to download vulnerability DB" in result.stderr, result.stderr
    assert "Total:" not in result.stdout + result.stderr
