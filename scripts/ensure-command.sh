#!/usr/bin/env bash
# Usage: ensure-command.sh COMMAND DEBIAN_PACKAGE
# Installs the Debian package that provides COMMAND when COMMAND is missing (as root, or through sudo).
set -euo pipefail
command_name=$1
package=$2
command -v "$command_name" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "error: '$command_name' is missing; install the Debian/Ubuntu package '$package' and retry" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: '$command_name' is missing and this is not a Debian-based system; install '$package' yourself" >&2
  exit 1
fi
echo "Installing $package (provides $command_name)..."
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null
command -v "$command_name" >/dev/null
