#!/bin/sh
# Entrypoint of the redis:7 stand-in. The official image is compiled with protected
# mode off, so other containers can connect without a password; Debian's build is not.
# Add `--protected-mode no` unless the command sets it, so that
# `command: redis-server --appendonly yes` in a compose file still behaves like the real image.
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
fi
exec "$@"
