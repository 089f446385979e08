#!/usr/bin/env bash
# A PostgreSQL server for one machine (a demo lab, the tests): the MLflow backend store and the Optuna study.
#   PGPASSWORD=... infra/postgres/start.sh DATA_DIR [PORT]    -> prints the base URL postgresql://afsweep@HOST:PORT
#   infra/postgres/stop.sh DATA_DIR
# Listens on 127.0.0.1 unless PG_LISTEN names other addresses. The database user `afsweep` has the password in
# PGPASSWORD (clients read it from there or ~/.pgpass: it never goes into a URL, a spec or a log). Creates the
# databases mlflow and optuna. PostgreSQL refuses to run as root: as root, it runs as the user `postgres`.
set -euo pipefail
DATA=${1:?usage: PGPASSWORD=... start.sh DATA_DIR [PORT]}
PORT=${2:-5432}
LISTEN=${PG_LISTEN:-127.0.0.1}
: "${PGPASSWORD:?set PGPASSWORD: the password of the database user afsweep}"
# Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin
INITDB=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)
BIN=$(dirname "$(readlink -f "${INITDB:?no PostgreSQL server installed (scripts/setup.sh installs it)}")")
AS=()
mkdir -p "$DATA"
if [ "$(id -u)" -eq 0 ]; then
  AS=(runuser -u postgres --)
  chown postgres "$DATA"
fi
chmod 700 "$DATA"
if [ ! -f "$DATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$PGPASSWORD" > "$pwfile"
  [ "$(id -u)" -eq 0 ] && chown postgres "$pwfile"
  "${AS[@]}" "$BIN/initdb" -D "$DATA" -U afsweep --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 >/dev/null
  rm -f "$pwfile"
fi
"${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
  -o "-c listen_addresses=$LISTEN -p $PORT -k $DATA" start >/dev/null
HOST=${LISTEN%%,*}
for db in mlflow optuna; do
  if ! "$BIN/psql" -h "$HOST" -p "$PORT" -U afsweep -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    "$BIN/createdb" -h "$HOST" -p "$PORT" -U afsweep "$db"
  fi
done
echo "postgresql://afsweep@$HOST:$PORT"
