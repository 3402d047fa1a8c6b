#!/usr/bin/env bash
# Build agent-sandbox:python from docker/sandbox/, the image lesson 04's tools run code in, then
# smoke-test it: Python runs under the runner's restrictions, and there is no shell, pip or package
# manager to run anything else. Re-running is cheap: unchanged layers come from the build cache.
#
# Usage: scripts/build-sandbox-image.sh
# Env:   PYTHON_IMAGE   another base image (default: python:3.11-slim, as in the Dockerfile)
#        BUILD_LOG_DIR  where the full build log goes (default: .build/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=agent-sandbox:python
logs=${BUILD_LOG_DIR:-$root/.build}
log=$logs/build-sandbox.log
mkdir -p "$logs"

args=()
[ -z "${PYTHON_IMAGE:-}" ] || args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")

echo "==> building $tag from docker/sandbox/Dockerfile (log: ${log#"$root"/})"
start=$SECONDS
# ${args[@]+...}: an empty array under `set -u` is "unbound" to bash before 4.4 (macOS's /bin/bash).
if ! DOCKER_BUILDKIT=1 docker build --progress=plain -t "$tag" ${args[@]+"${args[@]}"} "$root/docker/sandbox" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "==> $tag: build FAILED (full log: $log)" >&2
  exit 1
fi
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "==> $tag: built in $((SECONDS - start))s, $((size / 1000000)) MB"

# The same restrictions as the runner (research-agent/research_agent/sandbox/runner.py), minus the
# limits: its seccomp profile, and a uid with no account in the image, as every run gets.
smoke='import shutil, sys
missing = [t for t in ("sh", "bash", "pip", "pip3", "apt-get", "dpkg", "su", "mount") if shutil.which(t)]
assert not missing, f"the sandbox image has {missing}"
print(f"Python {sys.version.split()[0]}, no shell, no pip")'
if ! out=$(docker run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges \
  --security-opt "seccomp=$root/research-agent/research_agent/sandbox/seccomp.json" \
  --user 1500000000:1500000000 "$tag" python -I -c "$smoke" 2>&1); then
  echo "$out" >&2
  echo "==> $tag: smoke test FAILED" >&2
  exit 1
fi
echo "==> $tag: smoke test passed ($out)"
