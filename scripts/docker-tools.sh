#!/usr/bin/env bash
# Check the Docker CLI plugins the course needs and print their versions:
#   buildx      - BuildKit builds (`RUN --mount=type=cache`, build secrets)
#   compose v2  - `docker compose up --wait`, `develop.watch`
# Docker Desktop and Docker's own packages (docker-ce) ship both. When one is missing, this script
# installs it only as root on Debian or Ubuntu; anywhere else it stops and prints the command that
# installs it on this platform (docs/troubleshooting.md#a-docker-cli-plugin-is-missing).
# On Debian and Ubuntu with the distribution's docker.io, where no package of the release has the
# plugins (bookworm has only Compose v1, `docker-compose` 1.29), it fetches Debian trixie's two
# .debs, plain Go binaries that need only libc, with a private apt configuration (the system's
# sources and pins stay untouched; apt still checks the archive signature and hashes) and unpacks
# the binaries into a directory the docker CLI searches for plugins.
#
# Usage: scripts/docker-tools.sh [--force] [--check]
#   --force  reinstall even if working plugins are present
#   --check  afterwards run a smoke test against the engine (needs the
#            python:3.11-slim and redis:7 images: scripts/offline-images.sh)
# Env: CLI_PLUGINS_DIR (default /usr/local/lib/docker/cli-plugins; use
#      ~/.docker/cli-plugins when not root), PLUGINS_SUITE (default trixie),
#      OS_RELEASE (default /etc/os-release) and DOCKER_TOOLS_UID (default: the user's id) say
#      which system and user to act for (tests/repo/test_tooling.py fakes both).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
plugins_dir=${CLI_PLUGINS_DIR:-/usr/local/lib/docker/cli-plugins}
suite=${PLUGINS_SUITE:-trixie}
os_release=${OS_RELEASE:-/etc/os-release}
uid=${DOCKER_TOOLS_UID:-$(id -u)}
help_link=docs/troubleshooting.md#a-docker-cli-plugin-is-missing
# develop.watch needs Compose 2.22+; trixie has 2.26.
min_compose=2.22.0

force=0 check=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    --check) check=1 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

compose_ok() {
  local v
  v=$(docker compose version --short 2>/dev/null) || return 1
  v=${v#v}
  [ "$(printf '%s\n%s\n' "$min_compose" "${v%%-*}" | sort -V | head -n1)" = "$min_compose" ]
}

# "debian", "ubuntu", "fedora"... and the families it says it is like, from os-release.
os_ids() {
  [ -r "$os_release" ] || return 0
  # shellcheck disable=SC1090  # os-release is shell assignments by specification
  (. "$os_release" && echo "${ID:-} ${ID_LIKE:-}")
}

is_debian_like() {
  case " $(os_ids) " in
    *" debian "* | *" ubuntu "*) return 0 ;;
    *) return 1 ;;
  esac
}

# Stop with the command that installs the missing plugins here ($1: the plugins missing).
how_to_install() {
  local missing=$1 ce_packages="" brew_packages="" platform ids
  case $missing in *buildx*) ce_packages+=" docker-buildx-plugin" brew_packages+=" docker-buildx" ;; esac
  case $missing in *compose*) ce_packages+=" docker-compose-plugin" brew_packages+=" docker-compose" ;; esac
  platform=$(docker version --format '{{.Server.Platform.Name}}' 2>/dev/null || true)
  ids=" $(os_ids) "
  {
    echo "error: the Docker CLI plugin(s)$missing are missing (compose v2 >= $min_compose is needed)."
    if [[ $platform == *"Docker Desktop"* ]]; then
      echo "  Docker Desktop ships both: update Docker Desktop (Check for updates), then run this again."
    elif [ "$(uname -s)" = Darwin ]; then
      echo "  macOS with Homebrew:  brew install$brew_packages"
      echo "  (Homebrew prints a 'cliPluginsExtraDirs' line for ~/.docker/config.json: add it.)"
    elif [[ $ids == *" debian "* || $ids == *" ubuntu "* ]]; then
      echo "  Docker's packages (docker-ce):  sudo apt-get install$ce_packages"
      echo "  Debian/Ubuntu's docker.io:      sudo scripts/docker-tools.sh   (installs them from Debian $suite)"
    elif [[ $ids == *" fedora "* || $ids == *" rhel "* || $ids == *" centos "* ]]; then
      echo "  Docker's packages (docker-ce):  sudo dnf install$ce_packages"
    else
      echo "  Docker's packages (docker-ce):  install$ce_packages with your package manager"
      echo "  or see https://docs.docker.com/compose/install/linux/"
    fi
    echo "  More: $help_link"
  } >&2
  exit 1
}

if ! command -v docker >/dev/null 2>&1; then
  echo "error: no docker command: install Docker Desktop or Docker Engine (https://docs.docker.com/get-docker/)." >&2
  echo "  More: $help_link" >&2
  exit 1
fi

missing=""
docker buildx version >/dev/null 2>&1 || missing+=" buildx"
compose_ok || missing+=" compose"

if [ $force = 1 ] || [ -n "$missing" ]; then
  if [ "$uid" != 0 ] || ! is_debian_like; then
    [ -n "$missing" ] || { echo "error: --force reinstalls only as root on Debian or Ubuntu" >&2; exit 1; }
    how_to_install "$missing"
  fi
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
