#!/usr/bin/env bash
# Behind a TLS-intercepting proxy: add the proxy's CA to python:3.11-slim under the same name, so
# every Dockerfile of the course (FROM python:3.11-slim) builds unchanged: `docker build`, Compose
# v1 and v2. `docker pull python:3.11-slim` later brings back the image without the CA.
#
# Usage: scripts/trust-proxy-ca.sh CA_FILE [BASE_IMAGE [TAG]]
#   CA_FILE     the proxy's CA certificate (PEM), e.g. exported from your browser or IT department
#   BASE_IMAGE  default python:3.11-slim;  TAG  default: BASE_IMAGE itself
set -euo pipefail
ca=${1:?usage: trust-proxy-ca.sh CA_FILE [BASE_IMAGE [TAG]]}
base=${2:-python:3.11-slim}
tag=${3:-$base}
here=$(cd "$(dirname "$0")/.." && pwd)
grep -q 'BEGIN CERTIFICATE' "$ca" || { echo "error: $ca is not a PEM certificate" >&2; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$here/docker/proxy-ca/Dockerfile" "$context/Dockerfile"
cp "$ca" "$context/proxy-ca.crt"
docker build -q --build-arg "BASE=$base" -t "$tag" "$context" >/dev/null
echo "==> $tag: $base with $(basename "$ca") trusted by pip, uv and Python's ssl"
