"""The repository's tooling: installing missing commands, the pinned uv, what `make lint` covers."""

import ast
import hashlib
import http.server
import importlib.metadata
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

from support.lessons import makefile_text

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "scripts" / "ensure-command.sh"


@pytest.fixture
def bin_dir(tmp_path):
    """A PATH with only what ensure-command.sh needs, so the command looked for is missing; the
    system's sbin folders are faked by tmp_path/sbin (empty)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "sbin").mkdir()
    for tool in ("id", "head", "grep", "dirname", "flock"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    return bin_dir


def run_ensure(bin_dir: Path, *args: str, uid: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/bash", str(ENSURE), *args],
        env={
            "PATH": str(bin_dir),
            "HOME": os.environ.get("HOME", "/tmp"),
            "SYSTEM_COMMAND_DIRS": str(bin_dir.parent / "sbin"),
            "ENSURE_COMMAND_UID": str(uid),
            "ENSURE_COMMAND_LOCK": str(bin_dir.parent / "apt.lock"),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


def fake_command(path: Path, body: str = "") -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def test_a_missing_command_is_announced_before_apt_get_runs(bin_dir):
    apt = bin_dir / "apt-get"
    apt.write_text(
        "#!/bin/bash\n"
        'echo "APT-GET $*"\n'
        f'if [[ " $* " == *" install "* ]]; then printf "#!/bin/bash\\n" > {bin_dir}/fake-redis; '
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


def test_two_targets_installing_at_once_take_turns_and_install_once(bin_dir):
    """CI runs make targets side by side; dpkg refuses a second install while one runs."""
    (bin_dir / "sleep").symlink_to(subprocess.check_output(["which", "sleep"], text=True).strip())
    fake_command(
        bin_dir / "apt-get",
        f'if [[ " $* " != *" install "* ]]; then exit 0; fi\n'
        f"if [ -e {bin_dir}/busy ]; then echo 'E: Could not get lock' >&2; exit 100; fi\n"
        f"echo x > {bin_dir}/busy; echo install >> {bin_dir}/installs.log; sleep 0.5\n"
        f'printf "#!/bin/bash\\n" > {bin_dir}/fake-redis; /bin/chmod +x {bin_dir}/fake-redis\n'
        f"/bin/rm {bin_dir}/busy\n",
    )
    env = {
        "PATH": str(bin_dir),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SYSTEM_COMMAND_DIRS": str(bin_dir.parent / "sbin"),
        "ENSURE_COMMAND_UID": "0",
        "ENSURE_COMMAND_LOCK": str(bin_dir.parent / "apt.lock"),
    }
    both = [
        subprocess.Popen(
            ["/bin/bash", str(ENSURE), "fake-redis", "fake-redis-pkg"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=30), p.stderr.read()) for p in both]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert (bin_dir / "installs.log").read_text().split() == ["install"]


def test_without_apt_get_it_says_how_to_install_it_elsewhere(bin_dir):
    result = run_ensure(
        bin_dir, "fake-redis", "fake-redis-pkg", "needed", "macOS: brew install redis"
    )
    assert result.returncode == 1
    assert "no apt-get" in result.stderr
    assert "macOS: brew install redis" in result.stderr


def test_chromium_without_apt_get_says_what_to_do_on_macos_and_windows(bin_dir):
    """The browser tests drive Debian's Chromium at /usr/bin/chromium: a Mac or Windows learner
    is told where they run, though the Makefile names no other way to get it."""
    result = run_ensure(bin_dir, "chromium", "chromium", "the viewer is checked in a real browser")
    assert result.returncode == 1
    assert "/usr/bin/chromium" in result.stderr
    assert "macOS" in result.stderr and "WSL" in result.stderr, result.stderr


def test_when_apt_get_cannot_install_it_says_what_to_do_elsewhere(bin_dir):
    """Ubuntu (WSL's default distribution) has apt-get but no `chromium` package."""
    fake_command(
        bin_dir / "apt-get",
        'if [[ " $* " == *" install "* ]]; then\n'
        "  echo \"E: Package 'chromium' has no installation candidate\" >&2; exit 100\nfi\n",
    )
    result = run_ensure(bin_dir, "chromium", "chromium")
    assert result.returncode != 0
    assert "could not install" in result.stderr and "WSL" in result.stderr, result.stderr


def test_a_present_command_installs_nothing(bin_dir):
    result = run_ensure(bin_dir, "head", "coreutils")
    assert result.returncode == 0 and result.stdout == ""


@pytest.mark.parametrize("uid", [0, 1000])
def test_a_command_in_sbin_off_the_users_path_is_found(bin_dir, uid):
    """Debian keeps nginx in /usr/sbin and leaves /usr/sbin off a normal user's PATH."""
    fake_command(bin_dir / "apt-get", f"echo called >{bin_dir}/apt-get.log\n")
    fake_command(bin_dir.parent / "sbin" / "nginx")
    result = run_ensure(bin_dir, "nginx", "nginx", "a test puts nginx in front", uid=uid)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    assert not (bin_dir / "apt-get.log").exists()


@pytest.mark.parametrize(
    "with_sudo, command",
    [
        (True, "sudo apt-get update && sudo apt-get install -y nginx"),
        (False, "su -c 'apt-get update && apt-get install -y nginx'"),
    ],
    ids=["sudo", "no-sudo"],
)
def test_as_a_user_a_missing_command_stops_with_the_command_that_installs_it(
    bin_dir, with_sudo, command
):
    """Not root: no apt-get, no password prompt behind a test run: the exact command, then stop."""
    fake_command(bin_dir / "apt-get", f"echo called >{bin_dir}/apt-get.log\n")
    if with_sudo:
        fake_command(bin_dir / "sudo", f"echo called >{bin_dir}/sudo.log\n")
    result = run_ensure(bin_dir, "nginx", "nginx", "a test puts nginx in front", uid=1000)
    assert result.returncode == 1
    assert "'nginx' is missing (a test puts nginx in front)" in result.stdout
    assert command in result.stderr.splitlines()[-1], result.stderr
    assert not (bin_dir / "apt-get.log").exists() and not (bin_dir / "sudo.log").exists()


def test_python_finds_a_system_command_where_the_preflight_does(tmp_path, monkeypatch):
    """The tests and benchmarks that start nginx or wrk look where make's preflight looked."""
    from support.commands import find_command

    fake_command(tmp_path / "sbin-only-tool")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("SYSTEM_COMMAND_DIRS", str(tmp_path))
    assert find_command("sbin-only-tool") == str(tmp_path / "sbin-only-tool")
    monkeypatch.setenv("SYSTEM_COMMAND_DIRS", "")
    assert find_command.__wrapped__("sbin-only-tool") is None
    shell = subprocess.run(
        ["bash", str(ROOT / "scripts" / "find-command.sh"), "sbin-only-tool"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # an empty SYSTEM_COMMAND_DIRS does not mean "the current folder"
    )
    assert shell.returncode == 1 and shell.stdout == ""


def test_make_test_names_redis_before_installing_it_and_how_to_get_it_on_macos():
    makefile = makefile_text()
    assert re.search(r"^test: .*test-tools", makefile, re.M)
    recipe = re.search(r"^test-tools:.*\n((?:\t.*\n)+)", makefile, re.M)[1]
    ensure = next(line for line in recipe.splitlines() if "ensure-command.sh" in line)
    assert "redis-server" in ensure and "brew install redis" in ensure


@pytest.mark.skipif(
    any(Path(d, "nginx").exists() for d in ("/usr/bin", "/bin")), reason="nginx is on PATH here"
)
@pytest.mark.parametrize("nginx_in_sbin", [True, False], ids=["in-sbin", "missing"])
def test_make_test_as_a_user_finds_nginx_in_sbin_or_says_how_to_install_it(tmp_path, nginx_in_sbin):
    """`make test`'s preflight, as a Debian user whose PATH has no /usr/sbin."""
    fake, sbin = tmp_path / "fake-bin", tmp_path / "sbin"
    fake.mkdir()
    sbin.mkdir()
    fake_command(fake / "docker", "exit 1\n")  # no Docker: the Compose check is skipped
    fake_command(fake / "apt-get", f"echo called >{tmp_path}/apt-get.log\n")
    fake_command(sbin / "redis-server")
    fake_command(sbin / "initdb")
    if nginx_in_sbin:
        fake_command(sbin / "nginx")
    make = subprocess.run(
        ["make", "--no-print-directory", "test-tools"],
        cwd=ROOT,
        env={
            "PATH": f"{fake}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "SYSTEM_COMMAND_DIRS": str(sbin),
            "ENSURE_COMMAND_UID": "1000",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not (tmp_path / "apt-get.log").exists()
    if nginx_in_sbin:
        assert make.returncode == 0 and make.stdout == "", make.stdout + make.stderr
    else:
        assert make.returncode != 0
        assert "'nginx' is missing" in make.stdout
        assert "apt-get install -y nginx" in make.stderr, make.stderr


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    return dict(re.findall(r"^([\w.\[\],-]+)==(\S+) \\$", text, re.M))


def test_host_and_image_installs_pin_the_same_uv():
    lock = pins("requirements-dev.txt")["uv"]
    assert pins("requirements.txt")["uv"] == lock
    dockerfile = (ROOT / "research-agent" / "Dockerfile.optimized").read_text()
    assert re.findall(r"uv==([\w.]+)", dockerfile) == [lock]


def test_the_lessons_lock_is_the_images_plus_cachetools_and_uv_at_the_dev_locks_versions():
    """`make lesson-01` installs requirements.txt, `make test` requirements-dev.txt on top of it:
    one set of versions, the image's, on the host and in the containers."""
    lessons, dev, image = (
        pins("requirements.txt"),
        pins("requirements-dev.txt"),
        pins("research-agent/requirements.txt"),
    )
    # Lesson 12's image adds the A2A SDK to the research agent's (its own lock), and so do the
    # lessons on the host.
    a2a = pins("code/lesson12/requirements.txt")
    assert set(lessons) - set(image) == {"cachetools", "uv"} | (set(a2a) - set(image))
    assert {name: lessons.get(name) for name in image} == image
    assert {name: lessons.get(name) for name in a2a} == a2a
    assert {name: dev.get(name) for name in lessons} == lessons
    assert {"pytest", "pytest-xdist", "playwright", "kubernetes-validate"} & set(lessons) == set()


def test_lesson_01s_lock_is_part_of_the_lessons_lock_at_the_same_versions():
    """`make lesson-01` installs requirements-lesson01.txt; a later lesson adds requirements.txt to
    the same .venv, and `make test` requirements-dev.txt: none of them may move a version."""
    lesson01, lessons, dev = (
        pins("requirements-lesson01.txt"),
        pins("requirements.txt"),
        pins("requirements-dev.txt"),
    )
    assert {name: lessons.get(name) for name in lesson01} == lesson01
    assert {name: dev.get(name) for name in lesson01} == lesson01
    assert {"fastapi", "langchain-core"} <= set(lesson01)
    # uv comes from requirements.txt's pin (scripts/fetch_uv.py): its wheel is not downloaded twice.
    assert "uv" not in lesson01
    # What makes the full lock slow to install stays out of lesson 01's.
    assert {"langchain", "langchain-community", "a2a-sdk", "sqlalchemy", "mcp", "numpy"} & set(
        lesson01
    ) == set()


# Loads every module of lesson 01 (its steps, its production version, its package, the chat model
# with a real model's key) and prints the files of the course's own modules that came with them.
LESSON01_MODULES = """
import importlib, json, pkgutil, sys
import chat_model, lesson01
from support.lessons import ROOT
for module in pkgutil.iter_modules(lesson01.__path__):
    importlib.import_module(f"lesson01.{module.name}")
chat_model.make_chat_model("sk-not-a-real-key")
files = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
ours = [f for f in files if f.startswith(str(ROOT)) and "/.venv/" not in f]
print(json.dumps(sorted(ours)))
"""


def imported_names(source: Path) -> set[str]:
    """The top-level names a module imports, anywhere in it (relative imports left out)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_lesson_01s_lock_has_every_package_lesson_01_imports():
    """`make lesson-01` serves from a .venv with requirements-lesson01.txt only: every package that
    lesson 01's modules, or the research agent's modules they load, import must be in that lock
    (what those packages need is then in it too: the lock is resolved from them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [sys.executable, "-c", LESSON01_MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    files = [Path(f) for f in json.loads(result.stdout.splitlines()[-1])]  # the last line: its own
    assert ROOT / "research-agent" / "research_agent" / "offline_model.py" in files
    ours = {"chat_model", "lesson01", "research_agent", "support"}
    names = set().union(*map(imported_names, files)) - set(sys.stdlib_module_names) - ours
    owners = importlib.metadata.packages_distributions()
    unknown = {name for name in names if name not in owners}
    assert unknown == set(), f"imported, installed by no package here: {unknown}"
    needed = {re.sub(r"[-_.]+", "-", d).lower() for name in names for d in owners[name]}
    assert {"fastapi", "langchain-core", "langchain-openai", "limits"} <= needed
    assert needed - set(pins("requirements-lesson01.txt")) == set()


def test_lesson_targets_install_the_lessons_lock_and_the_others_the_dev_lock():
    makefile = makefile_text()
    needs = dict(re.findall(r"^([\w-]+):([^=#\n]*)", makefile, re.M))
    lesson01 = {t for t, deps in needs.items() if "$(VENV)/.lesson01" in deps.split()}
    lessons = {t for t, deps in needs.items() if "$(VENV)/.lessons" in deps.split()}
    dev = {t for t, deps in needs.items() if "$(VENV)/.installed" in deps.split()}
    # Lesson 01 alone starts from its own small lock; every other lesson needs the whole one.
    assert {t for t in lesson01 if t.startswith("lesson-")} == {"lesson-01", "lesson-01-production"}
    assert {"lesson-02", "research-agent", "lesson-04", "lesson-05", "lesson-12-step"} <= lessons
    assert {"test", "lint", "install", "docs", "smoke", "bench-api"} <= dev
    # Lesson 11's evals are tests (pytest, agentevals): its subject is the test tools' lock.
    assert {t for t in dev if t.startswith("lesson-")} == {"lesson-11"}


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


# --- scripts/docker-tools.sh: installs the CLI plugins only as root on Debian or Ubuntu ----------

DOCKER_TOOLS = ROOT / "scripts" / "docker-tools.sh"
HELP_LINK = "docs/troubleshooting.md#a-docker-cli-plugin-is-missing"
OS_RELEASES = {
    "debian": 'ID=debian\nVERSION_ID="12"\n',
    "ubuntu": 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n',
    "fedora": "ID=fedora\nVERSION_ID=42\n",
    "arch": "ID=arch\n",
}


@pytest.fixture
def no_plugins(tmp_path):
    """A docker without buildx or compose, an apt-get that logs its calls, a fake uname."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    scripts = {
        # The message a docker CLI gives for a plugin it does not have.
        "docker": "case $1 in\n"
        '  version) [ -n "${FAKE_PLATFORM:-}" ] && echo "$FAKE_PLATFORM" ;;\n'
        "  *) echo \"docker: '$1' is not a docker command.\" >&2; exit 1 ;;\n"
        "esac\n",
        "apt-get": f'echo "apt-get $*" >>{tmp_path}/apt-get.log; exit 100\n',
        "uname": 'echo "${FAKE_UNAME:-Linux}"\n',
    }
    for name, body in scripts.items():
        (fake / name).write_text("#!/bin/bash\n" + body)
        (fake / name).chmod(0o755)
    return tmp_path


def docker_tools(tmp_path, os_id: str, uid: int, **env) -> subprocess.CompletedProcess:
    (tmp_path / "os-release").write_text(OS_RELEASES[os_id])
    return subprocess.run(
        ["/bin/bash", str(DOCKER_TOOLS)],
        env={
            "PATH": f"{tmp_path / 'fake-bin'}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "OS_RELEASE": str(tmp_path / "os-release"),
            "DOCKER_TOOLS_UID": str(uid),
            "CLI_PLUGINS_DIR": str(tmp_path / "plugins"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "os_id, uid, env, command",
    [
        ("fedora", 1000, {}, "sudo dnf install docker-buildx-plugin docker-compose-plugin"),
        ("fedora", 0, {}, "sudo dnf install docker-buildx-plugin docker-compose-plugin"),
        ("debian", 1000, {}, "sudo apt-get install docker-buildx-plugin docker-compose-plugin"),
        ("ubuntu", 1000, {}, "sudo apt-get install docker-buildx-plugin docker-compose-plugin"),
        ("arch", 0, {}, "install docker-buildx-plugin docker-compose-plugin with your package"),
        ("arch", 1000, {"FAKE_UNAME": "Darwin"}, "brew install docker-buildx docker-compose"),
        (
            "fedora",
            1000,
            {"FAKE_PLATFORM": "Docker Desktop 4.51.0 (210443)"},
            "update Docker Desktop",
        ),
    ],
    ids=["fedora", "fedora-root", "debian-user", "ubuntu-user", "arch-root", "macos", "desktop"],
)
def test_missing_plugins_elsewhere_stop_with_the_install_command(
    no_plugins, os_id, uid, env, command
):
    result = docker_tools(no_plugins, os_id, uid, **env)
    assert result.returncode != 0
    assert command in result.stderr, result.stderr
    assert "buildx compose are missing" in result.stderr and HELP_LINK in result.stderr
    assert not (no_plugins / "plugins").exists()
    assert not (no_plugins / "apt-get.log").exists()


@pytest.mark.parametrize("os_id", ["debian", "ubuntu"])
def test_as_root_on_debian_or_ubuntu_it_installs_with_apt(no_plugins, os_id):
    result = docker_tools(no_plugins, os_id, 0)
    assert "installing buildx and compose v2 plugins from Debian trixie" in result.stdout
    # The fake apt-get fails its first call, the private `update`: nothing is unpacked.
    assert result.returncode == 100
    assert "Dir::Etc::SourceList=" in (no_plugins / "apt-get.log").read_text()


@pytest.mark.parametrize("target", ["build", "smoke", "lesson-03", "lesson-04", "lesson-05"])
def test_the_make_targets_that_need_the_plugins_give_that_message(no_plugins, target):
    """They stop at scripts/docker-tools.sh, before any build, with its message, not apt's."""
    (no_plugins / "os-release").write_text(OS_RELEASES["fedora"])
    make = subprocess.run(
        # -o: an out-of-date .venv is not reinstalled here; the test is about the plugins.
        ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", ".venv/.lessons", target],
        cwd=ROOT,
        env={
            "PATH": f"{no_plugins / 'fake-bin'}:{os.environ['PATH']}",
            "HOME": str(no_plugins),
            "OS_RELEASE": str(no_plugins / "os-release"),
            "DOCKER_TOOLS_UID": "1000",
            "CLI_PLUGINS_DIR": str(no_plugins / "plugins"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert make.returncode != 0
    assert "sudo dnf install docker-buildx-plugin" in make.stderr, make.stderr
    assert HELP_LINK in make.stderr
    assert "docker-tools" in make.stderr.splitlines()[-1]  # the recipe that stopped make
    assert not (no_plugins / "apt-get.log").exists()


# --- make ci: one list of checks, run by .ci/run and by the GitHub workflow ----------------------

# First the Python environments and the linters beside every image's build and gVisor's
# registration (as root, as CI is), then `make test` beside Swarm's two checks (one after the
# other), the linters still running; then the container checks from one queue, each on an image
# that is already built.
CI_BESIDE = {"install", "lint", "images", "gvisor"}
CI_SWARM = ["swarm-test", "bench-scaleout"]
CI_THEN = {"test", *CI_SWARM}
# Each queued check's name, and make's arguments for it.
CI_CHECKS = {
    "sandbox": "sandbox-test PYTEST_ARGS=-k 'not runsc'",
    "sandbox-gvisor": "sandbox-test PYTEST_ARGS=-k runsc",
    "mcp": "mcp-test",
    "variations": "variations-test",
    "durable": "durable-test",
    "a2a": "a2a-test",
    "traces": "traces-test",
    "compose": "compose-test",
    "smoke": "smoke",
    "pubsub": "pubsub-test",
    "evals": "evals",
    "evals-test": "evals-test",
}
FIRST = len(CI_BESIDE) + len(CI_THEN)


def first_goals_in_order(goals: list[str]) -> bool:
    """The environments and the images first (install, images then gvisor, side by side); then
    the linters, `make test` and Swarm's checks (Swarm's in their order), which start at once, so
    in any order among themselves: the linters start after install, the others once the images
    are built too."""
    first = goals[:FIRST]
    if sorted(first) != sorted(CI_BESIDE | CI_THEN):
        return False
    at = first.index
    after_install = ["lint", "test", *CI_SWARM]
    after_images = ["test", *CI_SWARM]
    return (
        all(at("install") < at(goal) for goal in after_install)
        and all(at("gvisor") < at(goal) for goal in after_images)
        and at("images") < at("gvisor")
        and at(CI_SWARM[0]) < at(CI_SWARM[1])
    )


def run_ci(
    tmp_path, docker_works: bool, failing: str = "", uid: int = 0, **env
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """.ci/run with a `make` that only logs its arguments, one call a line (without the images it
    is told are built, `-o IMAGE`, which it counts), and fails for FAILING (once FAIL_AFTER has
    started, if set); a docker that works or
    not, and an `id` that says `uid` (root, as in CI). FAKE_MAKE_SECONDS: how long a call that does
    not fail takes. events.log: each call's start and end."""
    fake = tmp_path / "fake-bin"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "make").write_text(
        "#!/bin/bash\n"
        "args=() built=0\n"
        'while [ $# -gt 0 ]; do if [ "$1" = -o ]; then built=$((built + 1)); shift 2; '
        'else args+=("$1"); shift; fi; done\n'
        f'echo "${{args[*]}}" >>{tmp_path}/make.log\n'
        f'echo "${{args[*]}} ${{BENCH_ROUNDS-}}/${{BENCH_PHASE_SECONDS-}} built=$built" '
        f">>{tmp_path}/env.log\n"
        f'echo "start ${{args[*]}}" >>{tmp_path}/events.log\n'
        # FAIL_AFTER: the failing call fails once this call has started (10 s at most).
        f'if [ "${{args[*]}}" = "{failing}" ]; then [ -z "${{FAIL_AFTER-}}" ] || '
        f'for _ in $(seq 200); do grep -qxF "start $FAIL_AFTER" {tmp_path}/events.log && break; '
        "sleep 0.05; done; exit 2; fi\n"
        'sleep "${FAKE_MAKE_SECONDS:-0}"\n'
        # WAIT_FOR_CHECK: this call ends once a container check has started (10 s at most).
        '[ "${args[*]}" != "${WAIT_FOR_CHECK-}" ] || for _ in $(seq 200); do '
        f'grep -q "^start sandbox-test" {tmp_path}/events.log && break; sleep 0.05; done\n'
        f'echo "end ${{args[*]}}" >>{tmp_path}/events.log\n'
    )
    (fake / "docker").write_text(f"#!/bin/bash\nexit {0 if docker_works else 1}\n")
    (fake / "id").write_text(f"#!/bin/bash\necho {uid}\n")
    for name in ("make", "docker", "id"):
        (fake / name).chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "run")],
        env={"PATH": f"{fake}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    log = tmp_path / "make.log"
    return result, log.read_text().splitlines() if log.exists() else []


def timed(stdout: str, outcome: str = "done") -> list[tuple[str, str]]:
    """(the name a line carries, or "", make's arguments) of each `==> make ... <outcome>` line,
    which says how long the check took and when it ended."""
    line = rf"^(?:\[([\w-]+)\] )?==> make (.+?) {outcome}(?: in| after) \d+s \(at \d+s\)$"
    return re.findall(line, stdout, re.M)


def test_make_ci_runs_every_check_once_in_order_each_step_timed(tmp_path):
    result, goals = run_ci(tmp_path, docker_works=True, CI="true")
    assert result.returncode == 0, result.stderr
    assert first_goals_in_order(goals), goals
    assert sorted(goals[FIRST:]) == sorted(CI_CHECKS.values()), goals
    done = timed(result.stdout)
    assert [goal for name, goal in done if not name] == ["install", "test"]
    assert [goal for name, goal in done if name == "lint"] == ["lint"]
    assert [goal for name, goal in done if name == "I"] == ["images", "gvisor"]
    assert [goal for name, goal in done if name == "swarm"] == CI_SWARM
    # Each queued check's lines carry its name.
    assert {name: goal for name, goal in done if name in CI_CHECKS} == CI_CHECKS
    # Only the checks after `make images` are told the images are built.
    built = dict(line.rsplit(" ", 1) for line in (tmp_path / "env.log").read_text().splitlines())
    assert {call.split()[0] for call, count in built.items() if count != "built=0"} == {
        "test",
        "swarm-test",
        "bench-scaleout",
        *(goal.split()[0] for goal in CI_CHECKS.values()),
    }


def test_one_container_check_at_a_time_beside_make_test_once_swarm_is_left(tmp_path):
    # Each call takes 1 s, and `make test` ends once a container check has started: the queue's
    # first worker starts after Swarm's checks, beside `make test`; the others once it has ended.
    result, _ = run_ci(
        tmp_path, docker_works=True, CI="true", FAKE_MAKE_SECONDS="1", WAIT_FOR_CHECK="test"
    )
    assert result.returncode == 0, result.stderr
    events = [e.split(" ", 1) for e in (tmp_path / "events.log").read_text().splitlines()]
    checks = set(CI_CHECKS.values())
    running, most = 0, {"beside make test": 0, "after": 0}
    phase = "before"
    for event, call in events:
        if call == "bench-scaleout" and event == "end":
            phase = "beside make test"
        if call == "test" and event == "end":
            phase = "after"
        if call in checks:
            assert phase != "before", events  # no check before Swarm's are done
            running += 1 if event == "start" else -1
            most[phase] = max(most[phase], running)
    assert most == {"beside make test": 1, "after": 5}, events


def test_the_queue_starts_no_check_after_one_failed_lets_the_running_ones_finish_and_fails(
    tmp_path,
):
    # Two workers; the first check fails once the second has started, which still runs. (Failing
    # at once, it could fail before the second worker took a check: then none is started.)
    first, second = list(CI_CHECKS.values())[:2]
    result, goals = run_ci(
        tmp_path,
        docker_works=True,
        failing=first,
        CI="true",
        CI_JOBS="2",
        FAKE_MAKE_SECONDS="1",
        FAIL_AFTER=second,
    )
    assert result.returncode != 0
    assert sorted(goals[FIRST:]) == sorted([first, second]), goals
    assert ("sandbox", first) in timed(result.stdout, "FAILED")
    assert ("sandbox-gvisor", second) in timed(result.stdout)
    assert "CI FAILED" in result.stdout
    # The run ends with what failed, for whoever reads only the end of its log.
    end = result.stdout.split("the lines that say what failed, again:\n")[-1]
    (line,) = end.splitlines()
    assert line.startswith(f"[sandbox] ==> make {first} FAILED after "), end


def test_gvisor_is_registered_as_root_required_under_ci_and_skipped_locally(tmp_path):
    result, goals = run_ci(tmp_path / "ci", docker_works=True, uid=1000, CI="true")
    assert result.returncode != 0 and goals == [], goals  # said before anything runs
    assert "CI runs as root to register gVisor" in result.stderr
    result, goals = run_ci(tmp_path / "local", docker_works=True, uid=1000)
    assert result.returncode == 0 and "gvisor" not in goals and "images" in goals, goals
    assert "runsc cases will skip" in result.stdout


def test_a_failing_check_before_the_queue_stops_the_run_there(tmp_path):
    # The first container check may have started beside `make test` (once Swarm is left): it
    # finishes; no other starts.
    result, goals = run_ci(tmp_path, docker_works=True, failing="test", CI="true")
    first_check = next(iter(CI_CHECKS.values()))
    assert result.returncode != 0 and set(goals) - {first_check} == CI_BESIDE | CI_THEN, goals
    assert "==> make test FAILED" in result.stdout
    result, goals = run_ci(tmp_path / "images", docker_works=True, failing="images", CI="true")
    assert result.returncode != 0 and sorted(goals) == ["images", "install", "lint"], goals
    assert "[I] ==> make images FAILED" in result.stdout
    result, goals = run_ci(tmp_path / "swarm", docker_works=True, failing="swarm-test", CI="true")
    # Swarm's benchmark and the queue never start (the linters may start at any moment before).
    assert result.returncode != 0 and set(goals) == CI_BESIDE | {"swarm-test", "test"}, goals
    assert len(goals) == len(set(goals)), goals
    assert "[swarm] ==> make swarm-test FAILED" in result.stdout
    # The linters run beside `make test` and Swarm's checks: their failure starts no queued check.
    result, goals = run_ci(tmp_path / "lint", docker_works=True, failing="lint", CI="true")
    assert result.returncode != 0 and not set(goals) & set(CI_CHECKS.values()), goals
    assert "[lint] ==> make lint FAILED" in result.stdout


def test_the_swarm_benchmark_runs_as_a_check_and_its_settings_stay_with_it(tmp_path):
    result, _ = run_ci(tmp_path, docker_works=True, CI="true")
    assert result.returncode == 0
    logged = [line.rsplit(" ", 1)[0] for line in (tmp_path / "env.log").read_text().splitlines()]
    assert "bench-scaleout 0/8" in logged and "mcp-test /" in logged, logged


def test_make_ci_without_docker_lints_and_tests_then_fails_under_ci(tmp_path):
    result, goals = run_ci(tmp_path, docker_works=False, CI="true")
    assert result.returncode == 1 and goals == ["lint", "test"]
    assert "Docker is not available" in result.stderr


def test_make_ci_without_docker_skips_the_container_checks_locally_and_says_so(tmp_path):
    result, goals = run_ci(tmp_path, docker_works=False)
    assert result.returncode == 0 and goals == ["lint", "test"]
    assert "container checks SKIPPED" in result.stdout


def test_ci_runs_lint_and_test_and_the_workflow_runs_it_through_make_ci():
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^ *(step|lane lint) lint\b", ci_run, re.M)
    assert re.search(r"^ *step test\b", ci_run, re.M)
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert re.findall(r"^\s*- run: (.*)$", workflow, flags=re.M) == ["make ci"]
    makefile = makefile_text()
    assert re.search(r"^ci:.*\n\t@bash .ci/run$", makefile, flags=re.M)


def test_the_makefile_uses_no_gnu_only_stat():
    """`stat -c` is GNU's; macOS's stat has -f. The Makefile asks Python instead."""
    makefile = makefile_text()
    assert "stat -c" not in makefile and "DOCKER_GID = $(shell $(PYTHON)" in makefile
