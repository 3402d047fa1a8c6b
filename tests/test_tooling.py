"""The repository's tooling: installing missing commands, the pinned uv, what `make lint` covers."""

import hashlib
import http.server
import io
import json
import os
import platform
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENSURE = ROOT / "scripts" / "ensure-command.sh"


@pytest.fixture
def bin_dir(tmp_path):
    """A PATH with only what ensure-command.sh needs, so the command looked for is missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "head", "grep"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    return bin_dir


def run_ensure(bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/bash", str(ENSURE), *args],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the stub apt-get path is taken as root only")
def test_a_missing_command_is_announced_before_apt_get_runs(bin_dir):
    apt = bin_dir / "apt-get"
    apt.write_text(
        "#!/bin/bash\n"
        'echo "APT-GET $*"\n'
        f'if [ "$1" = install ]; then printf "#!/bin/bash\\n" > {bin_dir}/fake-redis; '
        f"/bin/chmod +x {bin_dir}/fake-redis; fi\n"
    )
    apt.chmod(0o755)
    result = run_ensure(bin_dir, "fake-redis", "fake-redis-pkg", "the tests start a real one")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first_apt = next(i for i, line in enumerate(lines) if line.startswith("APT-GET"))
    said = "\n".join(lines[:first_apt])
    assert "'fake-redis' is missing (the tests start a real one)" in said
    assert "installing the Debian package 'fake-redis-pkg'" in said
    assert lines[-1] == "==> 'fake-redis' installed"


def test_without_apt_get_it_says_how_to_install_it_elsewhere(bin_dir):
    result = run_ensure(
        bin_dir, "fake-redis", "fake-redis-pkg", "needed", "macOS: brew install redis"
    )
    assert result.returncode == 1
    assert "no apt-get" in result.stderr
    assert "macOS: brew install redis" in result.stderr


def test_a_present_command_installs_nothing(bin_dir):
    result = run_ensure(bin_dir, "head", "coreutils")
    assert result.returncode == 0 and result.stdout == ""


def test_make_test_names_redis_before_installing_it_and_how_to_get_it_on_macos():
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)[1]
    ensure = next(line for line in recipe.splitlines() if "ensure-command.sh" in line)
    assert "redis-server" in ensure and "brew install redis" in ensure


def test_host_and_image_installs_pin_the_same_uv():
    lock = re.search(r"^uv==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.M)[1]
    dockerfile = (ROOT / "research-agent" / "Dockerfile.optimized").read_text()
    assert re.findall(r"uv==([\w.]+)", dockerfile) == [lock]


@pytest.fixture
def fake_index(tmp_path):
    """A package index on loopback serving one uv wheel for this platform, in PEP 691 JSON."""
    version = "9.9.9"
    arch = {"arm64": "arm64", "aarch64": "aarch64"}.get(platform.machine(), "x86_64")
    tag = f"macosx_11_0_{arch}" if sys.platform == "darwin" else f"manylinux_2_17_{arch}"
    name = f"uv-{version}-py3-none-{tag}.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(f"uv-{version}.data/scripts/uv", "#!/bin/sh\necho fake uv\n")
    wheel_bytes = buffer.getvalue()

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/simple/uv/":
                url = f"http://127.0.0.1:{self.server.server_port}/files/{name}"
                body = json.dumps({"files": [{"filename": name, "url": url}]}).encode()
            else:
                body = wheel_bytes
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/simple", version, wheel_bytes
    server.shutdown()


def fetch_uv(tmp_path, index: str, lock_text: str) -> subprocess.CompletedProcess:
    (tmp_path / "lock.txt").write_text(lock_text)
    (tmp_path / "bin").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_uv.py"), "lock.txt", "bin"],
        cwd=tmp_path,
        env={**os.environ, "PIP_INDEX_URL": index},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fetch_uv_installs_the_wheel_whose_hash_the_lock_lists(tmp_path, fake_index):
    index, version, wheel = fake_index
    good = hashlib.sha256(wheel).hexdigest()
    result = fetch_uv(tmp_path, index, f"uv=={version} \\\n    --hash=sha256:{good}\n")
    assert result.returncode == 0, result.stderr
    assert subprocess.check_output([str(tmp_path / "bin" / "uv")], text=True) == "fake uv\n"


def test_fetch_uv_refuses_a_wheel_the_lock_does_not_list(tmp_path, fake_index):
    index, version, _ = fake_index
    result = fetch_uv(tmp_path, index, f"uv=={version} \\\n    --hash=sha256:{'0' * 64}\n")
    assert result.returncode == 1 and "refusing" in result.stderr
    assert not (tmp_path / "bin" / "uv").exists()


def test_lint_finds_dockerfiles_and_scripts_by_name_not_by_list():
    """A new lesson's Dockerfile or script is linted without editing scripts/lint.sh."""
    lint = (ROOT / "scripts" / "lint.sh").read_text()
    assert "git ls-files '*Dockerfile*'" in lint
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if name.endswith("Dockerfile") or "Dockerfile." in name:
            assert name not in lint, f"{name} is listed by name in lint.sh"
