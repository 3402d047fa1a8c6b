#!/usr/bin/env bash
# What lesson 05's API needs around it: a Docker network and a Redis container on it, so the workers
# reach Redis by name and the API reaches it on a loopback port.
#
# Usage: scripts/lesson-05.sh up      create them (or reuse them), print REDIS_URL=... lines
#        scripts/lesson-05.sh serve   up, then run code/lesson05/variations_api.py in the foreground
#        scripts/lesson-05.sh run MODULE   up, then python -m MODULE (a step of docs/05) with up's
#                                          values (a FILE.py instead, a changed copy: python FILE.py)
#        scripts/lesson-05.sh down    remove the workers, Redis and the network (disconnect the ingest)
# Env:   NAME          prefix of everything created (default lesson-05; the tests use their own)
#        WORKER_IMAGE  the image the workers run (default research-agent:lesson-05)
#        REDIS_PORT    Redis's loopback port (default: a free one, kept across restarts)
#        PYTHON        the Python with the course's requirements (default .venv/bin/python)
#        TRACES        1: `up` connects lesson 09's trace ingest (`make lesson-09`) to the network
#                      and prints the API's and the workers' OTLP endpoints (docs/09-traces.md)
#        VIEWER_PROJECT  the Compose project of lesson 09 (default lesson09)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${NAME:-lesson-05}
redis=$name-redis
python=${PYTHON:-.venv/bin/python}
labels=(--label ai-course.role=lesson-05-redis --label "ai-course.deployment=$name")

address_on_network() {
  docker inspect -f "{{with index .NetworkSettings.Networks \"$name\"}}{{.IPAddress}}{{end}}" "$1"
}

# One service of lesson 09's Compose project: its container id, or nothing.
lesson09_service() {
  docker ps -q --filter "label=com.docker.compose.project=${VIEWER_PROJECT:-lesson09}" \
    --filter "label=com.docker.compose.service=$1" | head -n1
}

# TRACES=1: lesson 09's viewer and its ingest, or stop before anything is created.
find_viewer() {
  viewer=$(lesson09_service viewer)
  ingest=$(lesson09_service ingest)
  if [ -z "$viewer" ] || [ -z "$ingest" ]; then
    echo "TRACES=1: lesson 09's trace viewer is not running. Start it with \`make lesson-09\`," >&2
    echo "then run this again." >&2
    exit 1
  fi
}

# The API runs on this machine and sends to the viewer's loopback port (the viewer is yours). The
# workers are treated as hostile: they get lesson 09's ingest, which takes spans and nothing else
# (code/lesson09/ingest.cfg), connected to this network; the viewer itself is on a network of
# its own that no worker joins. No host address is involved: the same on Docker Engine and Desktop.
traces() {
  local ingest_name ip published
  ingest_name=$(docker inspect -f '{{.Name}}' "$ingest")
  ingest_name=${ingest_name#/}
  ip=$(address_on_network "$ingest")
  if [ -z "$ip" ]; then
    docker network connect --alias "$name-ingest" "$name" "$ingest"
    ip=$(address_on_network "$ingest")
    echo "connected lesson 09's trace ingest ($ingest_name) to the network $name at $ip" >&2
  fi
  published=$(docker port "$viewer" 6006/tcp | head -n1 | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
  if [ -z "$published" ]; then
    echo "TRACES=1: lesson 09's viewer publishes no port 6006 on this machine" >&2
    exit 1
  fi
  echo "OTEL_EXPORTER_OTLP_ENDPOINT=http://$published"
  echo "WORKER_OTEL_EXPORTER_OTLP_ENDPOINT=http://$ip:4318"
  # Spans leave in batches: half a second keeps the viewer close to live (the SDK's default is 5 s).
  echo "OTEL_BSP_SCHEDULE_DELAY=${OTEL_BSP_SCHEDULE_DELAY:-500}"
}

up() {
  [ "${TRACES:-}" != 1 ] || find_viewer
  docker network inspect "$name" >/dev/null 2>&1 ||
    docker network create --label ai-course.role=lesson-05-network "$name" >/dev/null
  # Redis asks every client for a password: the API's is kept in a file only this user can read
  # (.build/ is not committed); each worker gets a user of its own from the API.
  secret=.build/lesson-05/$name.redis-password
  if ! docker container inspect "$redis" >/dev/null 2>&1 || [ ! -s "$secret" ]; then
    docker rm -f -v "$redis" >/dev/null 2>&1 || true
    (umask 077 && mkdir -p "${secret%/*}" && "$python" -c 'import secrets
print(secrets.token_hex(24))' >"$secret")
    # `default` off, the API's user without CONFIG, MONITOR, FLUSHALL..., and the memory limits
    # (code/lesson05/redis_access.py), one a line. Read without mapfile, which macOS's /bin/bash
    # (3.2) lacks; a failure stops here, rather than Redis starting without them.
    if ! acl_lines=$("$python" -m lesson05.redis_access server-args <"$secret") || [ -z "$acl_lines" ]; then
      echo "error: no Redis ACL from '$python -m lesson05.redis_access server-args' (it failed or" >&2
      echo "printed nothing), so Redis was not started. PYTHON names a Python with the course installed" >&2
      echo "(default .venv/bin/python, which make lesson-05 installs)." >&2
      exit 1
    fi
    acl=()
    while IFS= read -r line; do acl+=("$line"); done <<<"$acl_lines"
    # A fixed loopback port, so that a restart (the policy below, or `docker restart`) brings
    # Redis back where the API looks; AOF, so that the runs going are back with it. Redis keeps to
    # its maxmemory (256 MB, in those arguments); the container's limit is twice that, for client
    # buffers, scripts and the copy-on-write of an AOF rewrite, so it is Redis that says no first.
    port=${REDIS_PORT:-$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')}
    docker run -d --name "$redis" --network "$name" "${labels[@]}" --restart unless-stopped \
      --memory 512m --memory-swap 512m -p "127.0.0.1:$port:6379" redis:7 \
      redis-server --save '' --appendonly yes --appendfsync everysec "${acl[@]}" >/dev/null
  fi
  docker start "$redis" >/dev/null
  password=$(cat "$secret")
  for _ in $(seq 50); do
    docker exec -e REDISCLI_AUTH="$password" "$redis" redis-cli --user api ping 2>/dev/null |
      grep -q PONG && break
    sleep 0.2
  done
  docker exec -e REDISCLI_AUTH="$password" "$redis" redis-cli --user api ping | grep -q PONG
  # The steps' workers share one user, `worker`, that may only XADD to a worker's stream
  # (run:ID:v:I:events) and PING; the API gives each of its workers a user of its own instead.
  # Set on every `up`: Redis keeps no ACL across a restart.
  worker_secret=.build/lesson-05/$name.worker-password
  [ -s "$worker_secret" ] || (umask 077 && "$python" -c 'import secrets
print(secrets.token_hex(24))' >"$worker_secret")
  digest=$("$python" -c 'import hashlib, sys
print(hashlib.sha256(sys.stdin.readline().strip().encode()).hexdigest())' <"$worker_secret")
  docker exec -e REDISCLI_AUTH="$password" "$redis" redis-cli --user api \
    ACL SETUSER worker reset on "#$digest" '~run:*:v:*:events' +xadd +ping | grep -qx OK
  port=$(docker port "$redis" 6379/tcp | head -n1 | sed 's/.*://')
  # Workers get Redis's address on the network rather than its name, so they do not depend on the
  # engine's embedded DNS (which a busy or reconfigured engine can lose).
  ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$name\").IPAddress}}" "$redis")
  echo "REDIS_URL=redis://api:$password@127.0.0.1:$port/0"
  echo "WORKER_REDIS_URL=redis://worker:$(cat "$worker_secret")@$ip:6379/0"
  echo "WORKER_NETWORK=$name"
  echo "DEPLOYMENT=$name"
  [ "${TRACES:-}" != 1 ] || traces
}

# The deployment's containers. One whose start was on its way when its step was stopped is
# "created" until the engine finishes it; removing it mid-start can leave its network endpoint
# behind with no container, which no later removal clears. Wait (5 s at most) for starts to land.
remove_containers() {
  for _ in $(seq 25); do
    [ -n "$(docker ps -aq --filter "label=ai-course.deployment=$name" --filter status=created)" ] ||
      break
    sleep 0.2
  done
  ids=$(docker ps -aq --filter "label=ai-course.deployment=$name")
  # -v: with the containers, the anonymous volume the redis image declares (VOLUME /data).
  [ -z "$ids" ] || xargs docker rm -f -v <<<"$ids" >/dev/null
}

down() {
  remove_containers
  # A network cannot be removed while a container is connected: what `up` connected and does not
  # own (lesson 09's ingest) is disconnected, and goes on running.
  for other in $(docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' "$name" 2>/dev/null); do
    docker network disconnect -f "$name" "$other" >/dev/null &&
      echo "disconnected $other from the network $name"
  done
  rm -f ".build/lesson-05/$name.redis-password" ".build/lesson-05/$name.worker-password"
  if docker network inspect "$name" >/dev/null 2>&1 && ! error=$(docker network rm "$name" 2>&1 >/dev/null); then
    echo "removed the workers and Redis of $name, but not its network:" >&2
    echo "  $error" >&2
    echo "  \`docker network inspect $name\` lists what the engine still counts on it; an endpoint" >&2
    echo "  with no container behind it goes with \`docker network disconnect -f $name NAME\`," >&2
    echo "  or else when the Docker daemon restarts. \`make lesson-05\` reuses the network meanwhile." >&2
    exit 1
  fi
  echo "removed the workers, Redis and the network of $name"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  serve | run)
    values=$(set -e; up)  # a command substitution drops `set -e`: without it, a failure goes on
    set -a
    eval "$values"
    WORKER_IMAGE=${WORKER_IMAGE:-research-agent:lesson-05}
    set +a
    if [ "$1" = run ]; then
      case ${2:?which module to run} in
        *.py) exec "$python" "$2" ;;
        *) exec "$python" -m "$2" ;;
      esac
    fi
    echo
    echo "  Lesson 05 on http://${HOST:-127.0.0.1}:${PORT:-8000}  (Ctrl+C stops the API; runs and Redis stay)"
    echo "  API docs:  http://${HOST:-127.0.0.1}:${PORT:-8000}/docs"
    if [ "${TRACES:-}" = 1 ]; then
      echo "  Traces:    the API sends to $OTEL_EXPORTER_OTLP_ENDPOINT (lesson 09's viewer: open it there),"
      echo "             the workers to $WORKER_OTEL_EXPORTER_OTLP_ENDPOINT (its write-only ingest, on $name)"
    fi
    echo "  Stop all:  make lesson-05-down   (removes Redis, the network and any worker container)"
    echo
    exec .venv/bin/python -m lesson05.variations_api
    ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
