#!/usr/bin/env bash
# Stop the server infra/postgres/start.sh started on DATA_DIR (its data stay there).
set -euo pipefail
DATA=${1:?usage: stop.sh DATA_DIR}
# Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin
INITDB=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1)
BIN=$(dirname "$(readlink -f "${INITDB:?no PostgreSQL server installed (scripts/setup.sh installs it)}")")
AS=()
[ "$(id -u)" -eq 0 ] && AS=(runuser -u postgres --)
"${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
