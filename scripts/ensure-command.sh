#!/usr/bin/env bash
# Usage: ensure-command.sh COMMAND DEBIAN_PACKAGE [WHY] [ELSEWHERE]
# Make's preflight for a system command a target needs. When scripts/find-command.sh finds it (on
# PATH, or in /usr/sbin and the other folders Debian leaves off a user's PATH), nothing happens.
# When it is missing, say so and why, then:
#   as root on a system with apt-get: install the Debian package that provides it;
#   as another user with apt-get: print the exact command that installs it and stop (make never asks
#     for a password behind a test run);
#   without apt-get (macOS, Fedora, ...), or when apt-get cannot install it (Ubuntu has no
#     `chromium` package): stop and say how to get it there (ELSEWHERE, e.g. "macOS: brew install
#     redis"; for a command whose caller gives none, what is known below).
# Env: ENSURE_COMMAND_UID (default: the user's id) says which user to act for (the tests fake it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command_name=$1
package=$2
why=${3:-}
elsewhere=${4:-}
uid=${ENSURE_COMMAND_UID:-$(id -u)}
"$BASH" "$here/find-command.sh" "$command_name" >/dev/null && exit 0
if [ -z "$elsewhere" ] && [ "$command_name" = chromium ]; then
  # The browser tests drive Debian's build at /usr/bin/chromium (Playwright's own download is not
  # used); neither macOS nor Ubuntu, whose chromium is a snap, puts one there.
  elsewhere="the browser tests drive Debian's /usr/bin/chromium: on macOS, run them on a Debian"
  elsewhere+=" machine or VM; on Windows, in WSL 2 with Debian (wsl --install -d Debian), where"
  elsewhere+=" this command installs it"
fi

echo "'$command_name' is missing${why:+ ($why)}."
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: this system has no apt-get, so it cannot be installed for you." >&2
  echo "Install '$command_name' yourself${elsewhere:+ (${elsewhere})} and run the command again." >&2
  exit 1
fi
if [ "$uid" -ne 0 ]; then
  echo "error: installing the Debian package '$package' needs root. Install it, then run the command again:" >&2
  if command -v sudo >/dev/null 2>&1; then
    echo "  sudo apt-get update && sudo apt-get install -y $package" >&2
  else
    echo "  su -c 'apt-get update && apt-get install -y $package'" >&2
  fi
  exit 1
fi
# Two make targets running side by side may both install something: dpkg allows one install at a
# time and a second apt-get fails at once ("Could not get lock"), so installs take turns on one lock
# file, and the one that waited looks again before installing.
exec 9>"${ENSURE_COMMAND_LOCK:-/tmp/ensure-command.lock}"
flock 9
"$BASH" "$here/find-command.sh" "$command_name" >/dev/null && exit 0
echo "==> installing the Debian package '$package': apt-get update && apt-get install $package"
# A download that fails is tried again (Acquire::Retries): one lost connection is not a failure.
if ! { apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 \
    install -y -qq \
    --no-install-recommends "$package" >/dev/null; }; then
  echo "error: apt-get could not install '$package'${elsewhere:+ (${elsewhere})}." >&2
  exit 1
fi
"$BASH" "$here/find-command.sh" "$command_name" >/dev/null ||
  { echo "error: '$package' installed no '$command_name'" >&2; exit 1; }
echo "==> '$command_name' installed"
