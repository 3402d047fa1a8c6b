#!/usr/bin/env bash
# Usage: ensure-command.sh COMMAND DEBIAN_PACKAGE [WHY] [ELSEWHERE]
# When COMMAND is missing, say so and why, then install the Debian package that provides it with
# apt-get (as root, or through sudo, which may ask for your password). Where there is no apt-get
# (macOS, Fedora, ...), stop and say how to get it there (ELSEWHERE, e.g. "macOS: brew install redis").
set -euo pipefail
command_name=$1
package=$2
why=${3:-}
elsewhere=${4:-}
command -v "$command_name" >/dev/null 2>&1 && exit 0

echo "'$command_name' is missing${why:+ ($why)}."
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: this system has no apt-get, so it cannot be installed for you." >&2
  echo "Install '$command_name' yourself${elsewhere:+ (${elsewhere})} and run the command again." >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "error: installing the Debian package '$package' needs root, and sudo is missing." >&2
  echo "As root: apt-get update && apt-get install $package" >&2
  exit 1
fi
echo "==> installing the Debian package '$package': ${as_root[*]:+${as_root[*]} }apt-get update && apt-get install $package"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null
command -v "$command_name" >/dev/null || { echo "error: '$package' installed no '$command_name'" >&2; exit 1; }
echo "==> '$command_name' installed"
