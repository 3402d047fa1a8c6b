#!/usr/bin/env bash
# What lesson 05's API needs around it: a Docker network and a Redis container on it, so the workers
# reach Redis by name and the API reaches it on a loopback port.
#
# Usage: scripts/lesson-05.sh up      create them (or reuse them), print REDIS_URL=... lines
#        scripts/lesson-05.sh serve   up, then run code/05_variations_api.py in the foreground
#        scripts/lesson-05.sh down    remove the workers, Redis and the network
# Env:   NAME          prefix of everything created (default lesson-05; the tests use their own)
#        WORKER_IMAGE  the image the workers run (default research-agent:lesson-05)
#        REDIS_PORT    Redis's loopback port (default: a free one, kept across restarts)
#        PYTHON        the Python with the course's requirements (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${NAME:-lesson-05}
redis=$name-redis
python=${PYTHON:-.venv/bin/python}
labels=(--label ai-course.role=lesson-05-redis --label "ai-course.deployment=$name")

up() {
  docker network inspect "$name" >/dev/null 2>&1 ||
    docker network create --label ai-course.role=lesson-05-network "$name" >/dev/null
  # Redis asks every client for a password: the API's is kept in a file only this user can read
  # (.build/ is not committed); each worker gets a user of its own from the API.
  secret=.build/lesson-05/$name.redis-password
  if ! docker container inspect "$redis" >/dev/null 2>&1 || [ ! -s "$secret" ]; then
    docker rm -f -v "$redis" >/dev/null 2>&1 || true
    (umask 077 && mkdir -p "${secret%/*}" && "$python" -c 'import secrets
print(secrets.token_hex(24))' >"$secret")
    # `default` off, the API's user without CONFIG, MONITOR, FLUSHALL... (code/variations/redis_access.py)
    mapfile -t acl < <("$python" code/variations/redis_access.py server-args <"$secret")
    # A fixed loopback port, so that a restart (the policy below, or `docker restart`) brings
    # Redis back where the API looks; AOF, so that the runs going are back with it.
    port=${REDIS_PORT:-$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')}
    docker run -d --name "$redis" --network "$name" "${labels[@]}" --restart unless-stopped \
      -p "127.0.0.1:$port:6379" redis:7 \
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
  port=$(docker port "$redis" 6379/tcp | head -n1 | sed 's/.*://')
  # Workers get Redis's address on the network rather than its name, so they do not depend on the
  # engine's embedded DNS (which a busy or reconfigured engine can lose).
  ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$name\").IPAddress}}" "$redis")
  echo "REDIS_URL=redis://api:$password@127.0.0.1:$port/0"
  echo "WORKER_REDIS_URL=redis://$ip:6379/0"
  echo "WORKER_NETWORK=$name"
  echo "DEPLOYMENT=$name"
}

down() {
  # -v: with the containers, the anonymous volume the redis image declares (VOLUME /data).
  ids=$(docker ps -aq --filter "label=ai-course.deployment=$name")
  [ -z "$ids" ] || xargs docker rm -f -v <<<"$ids" >/dev/null
  docker network rm "$name" >/dev/null 2>&1 || true
  rm -f ".build/lesson-05/$name.redis-password"
  echo "removed the workers, Redis and the network of $name"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  serve)
    set -a
    eval "$(up)"
    WORKER_IMAGE=${WORKER_IMAGE:-research-agent:lesson-05}
    set +a
    echo
    echo "  Lesson 05 on http://${HOST:-127.0.0.1}:${PORT:-8000}  (Ctrl+C stops the API; runs and Redis stay)"
    echo "  API docs:  http://${HOST:-127.0.0.1}:${PORT:-8000}/docs"
    echo "  Stop all:  make lesson-05-down   (removes Redis, the network and any worker container)"
    echo
    exec .venv/bin/python code/05_variations_api.py
    ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
