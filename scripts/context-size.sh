#!/usr/bin/env bash
# Print what a build context sends to the Docker daemon once .dockerignore has filtered it.
# Usage: scripts/context-size.sh [DIR...]   (default: research-agent and the repository root)
# It builds `FROM scratch` + `COPY . /` and reads back the result as a tar: exactly the files a
# `COPY . .` would see, with their sizes (needs BuildKit: scripts/docker-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- research-agent .
printf '%-16s %8s %10s  %s\n' CONTEXT FILES BYTES LARGEST
for dir in "$@"; do
  listing=$(printf 'FROM scratch\nCOPY . /\n' | docker build -q -f- -o type=tar,dest=- "$dir" | tar tvf - | awk '$1 !~ /^d/')
  files=$(wc -l <<<"$listing")
  bytes=$(awk '{s += $3} END {print s + 0}' <<<"$listing")
  largest=$(sort -k3,3n <<<"$listing" | tail -1 | awk '{print $6 " (" $3 " B)"}')
  printf '%-16s %8s %10s  %s\n' "$dir" "$files" "$bytes" "$largest"
  if grep -qE '(^|/)\.env($|\.)' <<<"$listing"; then echo "error: a .env file is in the context of $dir" >&2; exit 1; fi
done
