#!/usr/bin/env bash
# Build the research agent's images from research-agent/: research-agent:basic (Dockerfile),
# :multistage (Dockerfile.multistage) and :optimized (Dockerfile.optimized). Re-running is cheap:
# unchanged layers come from the build cache.
#
# Usage: scripts/build-images.sh [basic|multistage|optimized ...]
# Env:   TAG_SUFFIX     appended to each tag (research-agent:optimized-mine), to keep shared tags as they are
#        BUILD_LOG_DIR  where the full build logs go (default: .build/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/research-agent"
[ $# -gt 0 ] || set -- basic multistage optimized
logs=${BUILD_LOG_DIR:-$root/.build}
mkdir -p "$logs"

# OCI labels of the optimized image: the commit, so rebuilding one commit gives the same image.
args=(
  --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
  --build-arg "CREATED=$(git log -1 --format=%cI 2>/dev/null || echo unknown)"
)

for variant in "$@"; do
  case $variant in
    basic) dockerfile=Dockerfile ;;
    multistage | optimized) dockerfile=Dockerfile.$variant ;;
    *) echo "unknown variant: $variant (basic, multistage, optimized)" >&2; exit 2 ;;
  esac
  tag=research-agent:$variant${TAG_SUFFIX:-}
  log=$logs/build-$variant${TAG_SUFFIX:-}.log
  echo "==> building $tag from research-agent/$dockerfile (log: ${log#"$root"/})"
  start=$SECONDS
  if ! DOCKER_BUILDKIT=1 docker build --progress=plain -f "$dockerfile" -t "$tag" "${args[@]}" . >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "==> $tag: build FAILED (full log: $log)" >&2
    exit 1
  fi
  size=$(docker image inspect "$tag" --format '{{.Size}}')
  echo "==> $tag: built in $((SECONDS - start))s, $((size / 1000000)) MB"
done
