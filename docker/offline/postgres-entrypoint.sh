#!/bin/sh
# Entrypoint of the postgres:15 stand-in: the parts of the official image's interface the course uses.
# First start (PGDATA empty): initdb with POSTGRES_USER and POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE),
# create POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sql and *.sh against a server that listens on
# no TCP port, stop it. Then postgres runs as PID 1, so `docker stop` reaches it: STOPSIGNAL SIGINT is
# its fast shutdown, SIGTERM its smart one (it waits for clients to disconnect).
set -eu
if [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi
# Started as root (the default): own the data and socket folders, then run this again as postgres.
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
# An executable script runs; any other is sourced, as in the official image.
run_script() {
  if [ -x "$1" ]; then
    "$1"
  else
    # shellcheck disable=SC1090 # a script the user mounted
    . "$1"
  fi
}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  fi
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: the database is uninitialized and POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is not set" >&2
    exit 1
  fi
  : "${POSTGRES_USER:=postgres}"
  : "${POSTGRES_DB:=$POSTGRES_USER}"
  export POSTGRES_USER POSTGRES_DB
  # The password reaches initdb in a file, never on a command line (ps would show it).
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments, as in the official image
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    ${POSTGRES_INITDB_ARGS:-}
  rm -f "$pwfile"
  # Other containers connect over the network, with the password.
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl -w -o "-c listen_addresses=''" start
  export PGUSER="$POSTGRES_USER" PGDATABASE="$POSTGRES_DB"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo 'CREATE DATABASE :"db";' | psql -v ON_ERROR_STOP=1 --no-psqlrc -d postgres -v db="$POSTGRES_DB"
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case $f in
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --no-psqlrc -f "$f" ;;
      *.sh) echo "running $f"; run_script "$f" ;;
      *) [ ! -e "$f" ] || echo "ignoring $f" ;;
    esac
  done
  unset PGUSER PGDATABASE
  pg_ctl -w -m fast stop
  echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
