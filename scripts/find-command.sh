#!/usr/bin/env bash
# Usage: find-command.sh COMMAND
# Print where COMMAND is: on PATH, else in the folders where the system keeps administrators'
# commands (/usr/local/sbin, /usr/sbin, /sbin). Debian leaves those off a normal user's PATH, yet a
# user may run nginx from /usr/sbin. Last, in /usr/lib/postgresql/VERSION/bin (the newest VERSION),
# where Debian's postgresql package keeps initdb and postgres, on nobody's PATH. Exit 1, printing
# nothing, when it is in none of them.
# The one place that says where to look: ensure-command.sh (make's preflight) calls it, and so do
# the tests and benchmarks that start a system command (support/commands.py).
# Env: SYSTEM_COMMAND_DIRS (default /usr/local/sbin:/usr/sbin:/sbin and PostgreSQL's folder;
#      tests/repo/test_tooling.py fakes it).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 COMMAND" >&2; exit 2; }
postgres_dir() {
  local newest
  newest=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [ -d "$newest" ]; then printf ':%s' "$newest"; fi
}
dirs=${SYSTEM_COMMAND_DIRS-/usr/local/sbin:/usr/sbin:/sbin$(postgres_dir)}
# No empty entry: one would stand for the current folder.
PATH=$PATH${dirs:+:$dirs}
command -v "$1" 2>/dev/null | grep -m1 / || exit 1
