#!/usr/bin/env bash
# Installs (Debian's postgresql package) and starts a local PostgreSQL cluster for LIS Ledger.
# Idempotent: installs only what is missing, creates the cluster once, starts it if stopped.
# The cluster is for local development and tests: it listens on 127.0.0.1 only and trusts
# loopback connections, so no password is needed or stored. Production sets its own URLs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/lib.sh
. "$here/lib.sh"

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing PostgreSQL (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

pg_version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"

if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "${pg_version}/${LIS_PG_CLUSTER}"; then
  log "creating cluster ${pg_version}/${LIS_PG_CLUSTER} on port ${LIS_PG_PORT}"
  pg_createcluster "$pg_version" "$LIS_PG_CLUSTER" -p "$LIS_PG_PORT" \
    -- --auth-local=trust --auth-host=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat > "/etc/postgresql/${pg_version}/${LIS_PG_CLUSTER}/conf.d/lisledger.conf" <<CONF
listen_addresses = '127.0.0.1'
max_connections = 300
shared_buffers = 256MB
CONF
fi

status="$(pg_lsclusters -h | awk -v v="$pg_version" -v c="$LIS_PG_CLUSTER" '$1==v && $2==c {print $4}')"
if [ "$status" != "online" ]; then
  log "starting cluster ${pg_version}/${LIS_PG_CLUSTER}"
  pg_ctlcluster "$pg_version" "$LIS_PG_CLUSTER" start
fi

for _ in $(seq 1 60); do
  if pg_isready -q -h 127.0.0.1 -p "$LIS_PG_PORT"; then
    log "PostgreSQL ${pg_version} ready on 127.0.0.1:${LIS_PG_PORT}"
    exit 0
  fi
  sleep 0.5
done
log "PostgreSQL did not become ready on 127.0.0.1:${LIS_PG_PORT}"
exit 1
