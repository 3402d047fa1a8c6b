#!/bin/sh
# Entrypoint of the haproxy:2.6 stand-in, as in the official image: `haproxy ...` runs in the
# foreground (-db) as a master with workers (-W), so SIGUSR1 stops it softly (open connections finish)
# and SIGUSR2 reloads the configuration.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
