#!/bin/sh
# The official postgres image's contract, for Debian's PostgreSQL 15: on an empty $PGDATA, make a
# cluster whose superuser is $POSTGRES_USER (default postgres) with $POSTGRES_PASSWORD, and the
# database $POSTGRES_DB (default: the user's name); connections over TCP need that password
# (scram-sha-256), local socket connections inside the container are trusted (pg_isready, the
# readiness probe). A $PGDATA that holds a cluster is started as it is. Runs as uid 70.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"

if [ "${1:-postgres}" != postgres ]; then
  exec "$@"
fi
shift || true

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgresql: POSTGRES_PASSWORD is empty: set it (the chart takes it from its results Secret)" >&2
    exit 1
  fi
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
         --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  if [ "$database" != postgres ]; then
    # A server on the socket only, to create the database, then stopped.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 --username "$user" --dbname postgres \
         -c "CREATE DATABASE \"$database\" OWNER \"$user\"" >/dev/null
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "postgresql: made a cluster in $PGDATA (user $user, database $database)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
