#!/usr/bin/env bash
# Build every image the container checks use, side by side where nothing orders them: a build
# mostly waits on downloads and on the engine writing layers, so three at once take little longer
# than one. What one build starts from is built before it:
#
#   1. the base images (python:3.11-slim, redis:7, haproxy:2.6, postgres:15), pulled or built as
#      stand-ins, all at once;
#   2. once python:3.11-slim is there: agent-sandbox:python and research-agent:basic, :multistage
#      and :optimized;
#   3. once :optimized is there: the lessons' images (05, 07, 08, 09's viewer and ingest, 10, 12).
#
# Each build writes its output to .build/all-<name>.log and prints one line when it ends; the first
# failure is printed in full and makes the script exit 1, once every build under way has ended.
# Re-running is cheap: what exists comes from the build cache. `make images` runs this;
# .ci/run runs it before the container checks, so none of them spends its own time building.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
logs=${BUILD_LOG_DIR:-$root/.build}
mkdir -p "$logs"
make=(make --no-print-directory)

failed=0
# The builds under way: names[i] is started as pids[i]. Two indexed arrays rather than one
# associative array (declare -A), which macOS's /bin/bash, 3.2, does not have.
names=()
pids=()

# start NAME COMMAND...: run it in the background, its output in its log.
start() {
  local name=$1
  shift
  (
    begun=$SECONDS
    if "$@" >"$logs/all-$name.log" 2>&1; then
      echo "==> $name: done in $((SECONDS - begun))s"
    else
      tail -n 40 "$logs/all-$name.log" >&2
      echo "==> $name: FAILED after $((SECONDS - begun))s (log: .build/all-$name.log)" >&2
      exit 1
    fi
  ) &
  names+=("$name")
  pids+=("$!")
}

# finish NAME...: wait for those builds; remember a failure.
finish() {
  local name i
  for name in "$@"; do
    for i in "${!names[@]}"; do
      [ "${names[i]}" = "$name" ] || continue
      wait "${pids[i]}" || failed=1
      unset "names[i]" "pids[i]"
    done
  done
}

bases=(python:3.11-slim redis:7 haproxy:2.6 postgres:15)
# The Docker CLI plugins first, and mmdebstrap when a base image is missing (one apt-get at a time).
scripts/docker-tools.sh >/dev/null || exit 1
for image in "${bases[@]}"; do
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    scripts/ensure-command.sh mmdebstrap mmdebstrap "it builds the stand-in images" || exit 1
    break
  fi
done

for image in "${bases[@]}"; do
  start "${image%%:*}" scripts/offline-images.sh "$image"
done
finish python
[ "$failed" -eq 0 ] || { wait; exit 1; }

start sandbox scripts/build-sandbox-image.sh
start basic scripts/build-images.sh basic
start multistage scripts/build-images.sh multistage
start optimized scripts/build-images.sh optimized
finish optimized sandbox redis haproxy
[ "$failed" -eq 0 ] || { wait; exit 1; }

start lesson-05 "${make[@]}" lesson-05-image
start lesson-07 "${make[@]}" lesson-07-image
start lesson-09 "${make[@]}" lesson-09-images
finish postgres
start lesson-10 "${make[@]}" lesson-10-image
start lesson-12 "${make[@]}" lesson-12-image
start lesson-08 "${make[@]}" lesson-08-images
# Every build still under way (${a[@]+...}: an empty array under `set -u` is "unbound" to bash
# before 4.4).
finish ${names[@]+"${names[@]}"}
exit "$failed"
