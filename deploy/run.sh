#!/usr/bin/env bash
# Sets up and runs the ledger locally: starts (installing if needed) PostgreSQL, builds
# lisledger, creates the roles and database, applies migrations, imports the seed
# catalogue once, and verifies the audit trail. Idempotent: safe to run again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
deploy/postgres.sh

log "building lisledger (release)"
cargo build --release --locked -p lis-api
bin="$root/target/release/lisledger"

"$bin" db init
"$bin" migrate
"$bin" catalogue import --if-empty --imported-by "${USER:-operator}" deploy/seed/test-catalogue.csv
"$bin" audit verify

cat <<MSG

LIS Ledger is set up on PostgreSQL at 127.0.0.1:${LIS_PG_PORT} (database ${LIS_DB_NAME}).
  binary:        $bin
  audit check:   $bin audit verify
  new catalogue: $bin catalogue import FILE.csv
MSG
