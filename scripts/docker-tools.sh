#!/usr/bin/env bash
# Install the Docker CLI plugins the course needs and print their versions:
#   buildx      - BuildKit builds (`RUN --mount=type=cache`, build secrets)
#   compose v2  - `docker compose up --wait`, `develop.watch`
# Our machines only reach Debian's archive and PyPI, and bookworm has neither
# plugin (only Compose v1, `docker-compose` 1.29). Debian trixie packages both as
# plain Go binaries that need only libc, so we fetch the two trixie .debs with a
# private apt configuration (the system's sources and pins stay untouched; apt
# still checks the archive signature and hashes) and unpack the binaries into a
# directory the docker CLI searches for plugins.
#
# Usage: scripts/docker-tools.sh [--force] [--check]
#   --force  reinstall even if working plugins are present
#   --check  afterwards run a smoke test against the engine (needs the
#            python:3.11-slim and redis:7 images: scripts/offline-images.sh)
# Env: CLI_PLUGINS_DIR (default /usr/local/lib/docker/cli-plugins; use
#      ~/.docker/cli-plugins when not root), PLUGINS_SUITE (default trixie).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
plugins_dir=${CLI_PLUGINS_DIR:-/usr/local/lib/docker/cli-plugins}
suite=${PLUGINS_SUITE:-trixie}
# develop.watch needs Compose 2.22+; trixie has 2.26.
min_compose=2.22.0

force=0 check=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    --check) check=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

compose_ok() {
  local v
  v=$(docker compose version --short 2>/dev/null) || return 1
  v=${v#v}
  [ "$(printf '%s\n%s\n' "$min_compose" "${v%%-*}" | sort -V | head -n1)" = "$min_compose" ]
}

if [ $force = 1 ] || ! docker buildx version >/dev/null 2>&1 || ! compose_ok; then
  echo "==> installing buildx and compose v2 plugins from Debian $suite into $plugins_dir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/debs" "$tmp/empty"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$tmp/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$tmp/sources.list"
    -o "Dir::Etc::SourceParts=$tmp/empty"
    -o "Dir::Etc::Preferences=$tmp/empty/none"
    -o "Dir::Etc::PreferencesParts=$tmp/empty"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp"
    -o "Dir::Cache::Archives=$tmp/archives"
    -o "APT::Sandbox::User=root"
    -qq
  )
  apt-get "${apt_opts[@]}" update
  (cd "$tmp/debs" && apt-get "${apt_opts[@]}" download docker-buildx docker-compose)
  mkdir -p "$plugins_dir"
  for deb in "$tmp"/debs/*.deb; do
    dpkg-deb -x "$deb" "$tmp/root"
  done
  install -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-buildx" \
    "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugins_dir/"
fi

docker buildx version
docker compose version
compose_ok || { echo "compose v2 >= $min_compose is required" >&2; exit 1; }

if [ $check = 1 ]; then
  # A BuildKit build with a cache mount and an optional secret (no `# syntax=` line:
  # that would pull a frontend image from a registry), then a compose project with
  # healthchecks brought up with --wait and torn down.
  echo "==> smoke test: buildx + compose v2 against $(docker version --format '{{.Server.Version}}')"
  cd "$here/../docker/selftest"
  DOCKER_BUILDKIT=1 docker build -q -t docker-tools-selftest .
  docker compose -p docker-tools-selftest up -d --build --wait
  docker compose -p docker-tools-selftest down -v --rmi local
  docker rmi -f docker-tools-selftest >/dev/null
  echo "==> smoke test passed"
fi
