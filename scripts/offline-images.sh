#!/usr/bin/env bash
# Make the base images our Dockerfiles and compose files name available to Docker.
#
# First try `docker pull` of the real image. Where no registry can be reached
# (our CI machines, an air-gapped classroom), build a stand-in from Debian
# packages with mmdebstrap and tag it with the real name, so Dockerfiles build
# unchanged. Stand-ins carry a label saying so:
#   docker image inspect python:3.11-slim --format '{{json .Config.Labels}}'
#
# Usage: scripts/offline-images.sh [--force] [IMAGE...]
#   IMAGE   python:3.11-slim, redis:7, haproxy:2.6, postgres:15 (default: the first three; haproxy
#           is the research agent's Compose edge and lesson 06's balancer; postgres:15, lesson 10's
#           database, only when named: its stand-in takes minutes to build and only lesson 10 needs it)
#   --force pull or build again even if the image already exists
# Env: PULL_TIMEOUT (seconds, default 20), HOST_CA_BUNDLE (CA bundle copied into
#      the python stand-in, default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
hooks=$here/../docker/offline

force=0
images=()
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) images+=("$arg") ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=(python:3.11-slim redis:7 haproxy:2.6)

label='LABEL org.opencontainers.image.description="offline stand-in built from Debian packages"'
mirrors=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
# Shared by every stand-in: the smallest Debian (minbase), merged /usr without the
# usrmerge package (which would pull in ~50 MB of perl), no Recommends, no docs/man/locales;
# a download that fails is tried again (3 times), as one lost connection should not fail a build.
# mmdebstrap already drops apt's package lists and cache.
mm_common=(
  --variant=minbase
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='APT::Install-Recommends "false"'
  --aptopt='Acquire::Retries "3"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
)

ensure_mmdebstrap() {
  "$BASH" "$here/ensure-command.sh" mmdebstrap mmdebstrap "it builds the stand-in images"
}

# mmdebstrap writes the rootfs as a tarball to stdout; `docker import` turns it into
# a one-layer image, with --change for the Dockerfile settings the real image has.
build_python() {
  mmdebstrap "${mm_common[@]}" \
    --include=python3.11,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
    --customize-hook="\"$hooks/python-hook.sh\" \"\$1\"" \
    bookworm - "${mirrors[@]}" |
    docker import \
      --change "$label" \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PYTHON_VERSION=3.11' \
      --change 'CMD ["python3"]' \
      - python:3.11-slim
}

# Debian bookworm's HAProxy is 2.6, the branch the official haproxy:2.6 image carries.
# The official image's STOPSIGNAL SIGUSR1 cannot be set here (`docker import` rejects it): stacks
# set `stop_signal: SIGUSR1` themselves.
build_haproxy() {
  mmdebstrap "${mm_common[@]}" \
    --include=haproxy \
    --customize-hook="\"$hooks/haproxy-hook.sh\" \"\$1\"" \
    bookworm - "${mirrors[@]}" |
    docker import \
      --change "$label" \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'USER haproxy' \
      --change 'WORKDIR /var/lib/haproxy' \
      --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
      --change 'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' \
      - haproxy:2.6
}

build_redis() {
  mmdebstrap "${mm_common[@]}" \
    --include=redis-server,redis-tools \
    --customize-hook="\"$hooks/redis-hook.sh\" \"\$1\"" \
    bookworm - "${mirrors[@]}" |
    docker import \
      --change "$label" \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'WORKDIR /data' \
      --change 'VOLUME /data' \
      --change 'EXPOSE 6379' \
      --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
      --change 'CMD ["redis-server"]' \
      - redis:7
}

# Debian bookworm's PostgreSQL is 15, the major version the official postgres:15 image carries.
# The postgresql-common package would create a cluster at install time: the entrypoint makes one on
# first start instead, in the volume (docker/offline/postgres-entrypoint.sh).
# `docker import` cannot set the official image's STOPSIGNAL SIGINT (PostgreSQL's fast shutdown;
# SIGTERM is its smart one, which waits for every client to leave): a one-line build on top does.
build_postgres() {
  local rootfs=offline-stand-in:postgres-rootfs-$$
  # shellcheck disable=SC2016 # $1 is the hook's argument: mmdebstrap's shell expands it
  mmdebstrap "${mm_common[@]}" \
    --include=postgresql-15 \
    --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/offline-stand-in.conf"' \
    --customize-hook="\"$hooks/postgres-hook.sh\" \"\$1\"" \
    bookworm - "${mirrors[@]}" |
    docker import \
      --change "$label" \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin' \
      --change 'ENV PG_MAJOR=15' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'ENV PGDATA=/var/lib/postgresql/data' \
      --change 'VOLUME /var/lib/postgresql/data' \
      --change 'EXPOSE 5432' \
      --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
      --change 'CMD ["postgres"]' \
      - "$rootfs" || return
  printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$rootfs" | DOCKER_BUILDKIT=1 docker build -q -t postgres:15 -
  local built=$?
  docker rmi "$rootfs"
  return $built
}

for image in "${images[@]}"; do
  case $image in
    python:3.11-slim) builder=build_python ;;
    redis:7) builder=build_redis ;;
    haproxy:2.6) builder=build_haproxy ;;
    postgres:15) builder=build_postgres ;;
    *) echo "unknown image: $image (known: python:3.11-slim redis:7 haproxy:2.6 postgres:15)" >&2; exit 2 ;;
  esac
  if [ $force = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    what=$(docker image inspect "$image" --format '{{index .Config.Labels "org.opencontainers.image.description"}}')
    echo "==> $image: already present (${what:-real image}), skipping (--force to redo)"
    continue
  fi
  echo "==> $image: trying docker pull (timeout ${PULL_TIMEOUT:-20}s)"
  if timeout "${PULL_TIMEOUT:-20}" docker pull -q "$image"; then
    echo "==> $image: PULLED the real image"
    continue
  fi
  echo "==> $image: pull failed, BUILDING offline stand-in from Debian packages"
  ensure_mmdebstrap
  start=$SECONDS
  log=$(mktemp)
  if ! $builder 2>"$log" >/dev/null; then
    cat "$log" >&2
    echo "==> $image: stand-in build FAILED" >&2
    exit 1
  fi
  grep -E '^(python hook|I: success)' "$log" || true
  rm -f "$log"
  size=$(docker image inspect "$image" --format '{{.Size}}')
  echo "==> $image: built stand-in in $((SECONDS - start))s, $((size / 1000000)) MB"
done
