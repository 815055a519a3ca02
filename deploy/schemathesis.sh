#!/usr/bin/env bash
# Runs schemathesis (PyPI, pinned) against the API's own OpenAPI document, with a real
# database holding a demo lab day and the projection workers running: no response may be
# a server error or differ from the document, and input it forbids must be refused. Each
# operation is called as a role allowed to perform it (deploy/schemathesis.toml);
# deploy/schemathesis_hooks.py fills in the catalogue's facts (specimen, unit) where a
# request names real tests or a real specimen, and checks that no refused request (4xx)
# wrote an event. Needs PostgreSQL (deploy/postgres.sh) and a built
# `target/debug/lisledger`. Arguments are passed on to `st run` (e.g. `--report har`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

venv="${LIS_ST_DIR:-/var/tmp/lisledger-st}"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "4.32.5" ||
  ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
  log "installing schemathesis 4.32.5 and psycopg 3.3.9"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5" "psycopg[binary]==3.3.9"
fi

db="${LIS_ST_DB:-lisledger_schemathesis}"
port="${LIS_ST_PORT:-18080}"
export LIS_DATABASE_URL="postgres://lisledger_app@127.0.0.1:${LIS_PG_PORT}/${db}"
export LIS_MIGRATION_DATABASE_URL="postgres://lisledger_owner@127.0.0.1:${LIS_PG_PORT}/${db}"
export LIS_HTTP_ADDR="127.0.0.1:${port}"
export LIS_JWT_SECRET="schemathesis-run-$(head -c 24 /dev/urandom | base64 -w0)"
export LIS_KEK="$(head -c 32 /dev/urandom | base64 -w0)"
export LIS_RATE_PER_USER=0 LIS_RATE_PER_ADDRESS=0 RUST_LOG=warn
unset LIS_KAFKA_BROKERS LIS_MONGO_URL
bin="$root/target/debug/lisledger"

psql "$LIS_ADMIN_DATABASE_URL" -qc "DROP DATABASE IF EXISTS ${db} WITH (FORCE)"
"$bin" db init >/dev/null
"$bin" migrate >/dev/null
"$bin" catalogue import --imported-by schemathesis deploy/seed/test-catalogue.csv >/dev/null
"$bin" demo --orders 10 >/dev/null
roles=(pathologist clinician phlebotomist technologist admin auditor)
password="$(head -c 18 /dev/urandom | base64 -w0)"
for role in "${roles[@]}"; do
  echo "$password" | "$bin" users add "st.${role}" --role "$role" \
    --reason "a schemathesis run's ${role}" --actor schemathesis >/dev/null
done

# The read models are kept by the projection workers, as in production: without them a
# query asking for its own write (`min_position`) could only time out.
"$bin" project >"$venv/project.log" 2>&1 &
projector=$!
"$bin" serve >"$venv/serve.log" 2>&1 &
server=$!
trap 'kill $server $projector 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:${port}/healthz" >/dev/null && break
  sleep 0.1
done
for role in "${roles[@]}"; do
  token="$(curl -fs -X POST "http://127.0.0.1:${port}/auth/login" -H 'content-type: application/json' \
    -d "{\"username\":\"st.${role}\",\"password\":\"${password}\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
  export "ST_TOKEN_${role^^}=${token}"
done

# Every check but one: a request the schemas allow may still break a lab rule (an unknown
# test, a specimen not yet received, a reused Idempotency-Key), and is rightly refused.
log "schemathesis: every operation; no server error, answers as documented, bad input refused"
export LIS_ST_BASE="http://127.0.0.1:${port}" LIS_ST_CATALOGUE="$root/deploy/seed/test-catalogue.csv"
# The hooks' check that a refused request wrote no event reads the event store's head
# before and after each call, as the application role.
export LIS_ST_EVENTS_URL="$LIS_DATABASE_URL"
SCHEMATHESIS_HOOKS="$root/deploy/schemathesis_hooks.py" "$venv/bin/st" --config-file deploy/schemathesis.toml run "http://127.0.0.1:${port}/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --exclude-path /events/stream \
  --max-examples "${LIS_ST_EXAMPLES:-25}" \
  --request-timeout 10 "$@"
