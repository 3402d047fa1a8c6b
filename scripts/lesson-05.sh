#!/usr/bin/env bash
# What lesson 05's API needs around it: a Docker network and a Redis container on it, so the workers
# reach Redis by name and the API reaches it on a loopback port.
#
# Usage: scripts/lesson-05.sh up      create them (or reuse them), print REDIS_URL=... lines
#        scripts/lesson-05.sh serve   up, then run code/05_variations_api.py in the foreground
#        scripts/lesson-05.sh down    remove the workers, Redis and the network
# Env:   NAME          prefix of everything created (default lesson-05; the tests use their own)
#        WORKER_IMAGE  the image the workers run (default research-agent:lesson-05)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${NAME:-lesson-05}
redis=$name-redis
labels=(--label ai-course.role=lesson-05-redis --label "ai-course.deployment=$name")

up() {
  docker network inspect "$name" >/dev/null 2>&1 ||
    docker network create --label ai-course.role=lesson-05-network "$name" >/dev/null
  if ! docker container inspect "$redis" >/dev/null 2>&1; then
    # No persistence: a run lives for RUN_TTL_SECONDS in memory. Published on loopback only.
    docker run -d --name "$redis" --network "$name" "${labels[@]}" -p 127.0.0.1::6379 \
      redis:7 redis-server --save '' --appendonly no >/dev/null
  fi
  docker start "$redis" >/dev/null
  for _ in $(seq 50); do
    docker exec "$redis" redis-cli ping 2>/dev/null | grep -q PONG && break
    sleep 0.2
  done
  docker exec "$redis" redis-cli ping | grep -q PONG
  port=$(docker port "$redis" 6379/tcp | head -n1 | sed 's/.*://')
  # Workers get Redis's address on the network rather than its name, so they do not depend on the
  # engine's embedded DNS (which a busy or reconfigured engine can lose).
  ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$name\").IPAddress}}" "$redis")
  echo "REDIS_URL=redis://127.0.0.1:$port/0"
  echo "WORKER_REDIS_URL=redis://$ip:6379/0"
  echo "WORKER_NETWORK=$name"
  echo "DEPLOYMENT=$name"
}

down() {
  # -v: with the containers, the anonymous volume the redis image declares (VOLUME /data).
  ids=$(docker ps -aq --filter "label=ai-course.deployment=$name")
  [ -z "$ids" ] || xargs docker rm -f -v <<<"$ids" >/dev/null
  docker network rm "$name" >/dev/null 2>&1 || true
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
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
