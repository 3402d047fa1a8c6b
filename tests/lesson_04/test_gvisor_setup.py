"""`make gvisor` (scripts/gvisor.sh) without touching this machine's Docker: merging the runtimes
into a daemon.json keeps what is there and is idempotent; as another user it changes nothing and
prints the commands. (Registering for real is checked by test_gvisor_runtime.py.)"""

import json
import os
import subprocess
import sys

import pytest

from support.lessons import ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gVisor runs on Linux engines")
SCRIPT = ROOT / "scripts" / "gvisor.sh"
OURS = {
    "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none"]},
    "runsc-net": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=host"]},
}


def gvisor(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    environment.pop("RUNSC_PLATFORM", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=60
    )


def test_merge_keeps_every_setting_and_runtime_and_is_idempotent(tmp_path):
    config = tmp_path / "daemon.json"
    before = {
        "log-driver": "json-file",
        "mtu": 1400,
        "runtimes": {"kata": {"path": "/usr/bin/kata-runtime"}, "runsc": {"path": "/old"}},
    }
    config.write_text(json.dumps(before))
    config.chmod(0o640)

    first = gvisor("--merge", str(config))
    assert first.returncode == 0 and first.stdout.strip() == "changed", first
    merged = json.loads(config.read_text())
    assert merged["log-driver"] == "json-file" and merged["mtu"] == 1400
    assert merged["runtimes"] == {"kata": {"path": "/usr/bin/kata-runtime"}, **OURS}
    assert config.stat().st_mode & 0o777 == 0o640
    assert json.loads((tmp_path / "daemon.json.before-gvisor").read_text()) == before

    text = config.read_text()
    again = gvisor("--merge", str(config))
    assert again.returncode == 0 and again.stdout.strip() == "unchanged", again
    assert config.read_text() == text


def test_merge_creates_a_missing_file_and_leaves_a_broken_one_alone(tmp_path):
    missing = tmp_path / "new" / "daemon.json"
    assert gvisor("--merge", str(missing)).returncode == 0
    assert json.loads(missing.read_text()) == {"runtimes": OURS}

    broken = tmp_path / "daemon.json"
    broken.write_text('{"mtu": 1400,')
    result = gvisor("--merge", str(broken))
    assert result.returncode != 0 and "not valid JSON" in result.stderr, result
    assert broken.read_text() == '{"mtu": 1400,'


def test_as_another_user_it_prints_the_commands_and_changes_nothing(tmp_path):
    config = tmp_path / "daemon.json"
    config.write_text('{"mtu": 1400}')
    result = gvisor(GVISOR_UID="1000", DOCKER_DAEMON_JSON=str(config))
    assert result.returncode == 1, result
    if "Docker Desktop" in result.stdout:
        pytest.skip("this Docker is Docker Desktop: the script says gVisor needs a Linux engine")
    assert "needs root" in result.stdout
    assert "apt-get install -y runsc" in result.stdout
    assert f"in {config}" in result.stdout and '"runsc-net"' in result.stdout
    assert "kill -HUP $(pidof dockerd)" in result.stdout
    assert config.read_text() == '{"mtu": 1400}'


def test_a_runsc_that_hangs_on_this_machine_is_refused_in_bounded_time(tmp_path):
    """RUNSC_PLATFORM=kvm on a virtual machine whose nested KVM does not let gVisor finish: the
    check before registering hung for good. Bounded now, and nothing is registered."""
    hanging = tmp_path / "runsc"
    fake = '#!/bin/sh\n[ "$1" = --version ] && echo "runsc (fake)" && exit 0\nsleep 60\n'
    hanging.write_text(fake)
    hanging.chmod(0o755)
    config = tmp_path / "daemon.json"
    config.write_text('{"mtu": 1400}')
    result = gvisor(GVISOR_UID="0", RUNSC=str(hanging), RUNSC_CHECK_SECONDS="1",
                    DOCKER_DAEMON_JSON=str(config))  # fmt: skip
    assert result.returncode == 1, result
    assert "runsc did not finish within 1s" in result.stderr
    assert "nothing was registered" in result.stderr
    assert config.read_text() == '{"mtu": 1400}'
