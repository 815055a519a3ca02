#!/usr/bin/env bash
# Sets up and runs the ledger locally: starts (installing if needed) PostgreSQL, builds
# lisledger, creates the roles and database, applies migrations, imports the seed
# catalogue and a synthetic demo lab day once, makes a seal key once, verifies the
# audit trail, and starts the relay
# (sealing) and the projection workers in the background. Single-node mode (PostgreSQL
# alone) unless LIS_KAFKA_BROKERS is set. Idempotent: safe to run again.
# `deploy/run.sh stop` stops the background roles.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

state="$root/deploy/.local"
mkdir -p "$state"
export LIS_SEAL_KEY_FILE="${LIS_SEAL_KEY_FILE:-$state/seal.key}"
export LIS_JWT_SECRET_FILE="${LIS_JWT_SECRET_FILE:-$state/jwt.secret}"
export LIS_KEK_FILE="${LIS_KEK_FILE:-$state/kek}"
bin="$root/target/release/lisledger"

stop_role() {
  local pidfile="$state/$1.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" && log "stopped $1"
  fi
  rm -f "$pidfile"
}

start_role() {
  local name="$1"; shift
  local pidfile="$state/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  setsid nohup "$bin" "$@" >>"$state/$name.log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
  log "started $name (pid $!, log $state/$name.log)"
}

if [ "${1:-start}" = "stop" ]; then
  stop_role serve
  stop_role relay
  stop_role project
  exit 0
fi

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
deploy/postgres.sh

log "building lisledger (release)"
cargo build --release --locked -p lis-api

"$bin" db init
"$bin" migrate
"$bin" catalogue import --if-empty --imported-by "${USER:-operator}" deploy/seed/test-catalogue.csv
if [ ! -f "$LIS_SEAL_KEY_FILE" ]; then
  "$bin" seal keygen --out "$LIS_SEAL_KEY_FILE"
fi
if [ -z "${LIS_KEK:-}" ] && [ ! -f "$LIS_KEK_FILE" ]; then
  "$bin" keys generate --out "$LIS_KEK_FILE"
fi
if [ ! -f "$LIS_JWT_SECRET_FILE" ]; then
  (umask 077 && head -c 48 /dev/urandom | base64 -w0 >"$LIS_JWT_SECRET_FILE")
  log "made a token key in $LIS_JWT_SECRET_FILE"
fi
"$bin" demo --if-empty --orders "${LIS_DEMO_ORDERS:-200}"
"$bin" audit verify

start_role relay relay
start_role project project
start_role serve serve

cat <<MSG

LIS Ledger is running on PostgreSQL at 127.0.0.1:${LIS_PG_PORT} (database ${LIS_DB_NAME}),
$( [ -n "${LIS_KAFKA_BROKERS:-}" ] && echo "publishing to Kafka at ${LIS_KAFKA_BROKERS}" || echo "in single-node mode (no Kafka)").
  API:           http://${LIS_HTTP_ADDR:-127.0.0.1:8080}  (GET /openapi.json)
  demo users:    printed above on the first run (one per role)
  first user:    echo 'a long passphrase' | $bin users add admin.1 --role admin --reason 'first admin' --actor YOUR.NAME
  log in:        curl -s -X POST http://${LIS_HTTP_ADDR:-127.0.0.1:8080}/auth/login -H 'content-type: application/json' \\
                   -d '{"username":"admin.1","password":"a long passphrase"}'
  what to query: GET /worklists?department=BIOCHEMISTRY, GET /critical-results, GET /turnaround,
                 GET /audit/results/{id} (auditor), GET /events/stream (analyst)
  read models:   psql ${LIS_DATABASE_URL} -c 'SELECT * FROM proj_orders.worklist'
  audit check:   LIS_SEAL_KEY_FILE=$LIS_SEAL_KEY_FILE $bin audit verify
  stop:          deploy/run.sh stop
MSG
