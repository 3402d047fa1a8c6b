#!/bin/sh
# Entrypoint of the redis:7 stand-in. The official image is compiled with protected
# mode off, so other containers can connect without a password; Debian's build is not.
# Add `--protected-mode no` unless the command sets it, so that
# `command: redis-server --appendonly yes` in a compose file still behaves like the real image.
# Like the real image, it starts as root and runs redis-server as the redis user.
set -e
# Like the official entrypoint: `docker run redis:7 --appendonly yes` means redis-server.
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
  # Like the official entrypoint: started as root, redis-server gets the data it needs and runs
  # as the redis user; any other command runs as whoever started it (root, unless told).
  if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
