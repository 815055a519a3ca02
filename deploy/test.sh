#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: starts (installing if needed) the local
# PostgreSQL, MongoDB-wire server and Kafka broker (and fetches the FHIR validator), then
# formatting, lints and every test against them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
# A one-off build gains nothing from incremental caches, which are as big again as the
# build itself. The free space is logged first: a linker killed by SIGBUS is what a
# full disk looks like.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
log "free disk for target/: $(df -h --output=avail "$root" | tail -1 | tr -d ' ')"
deploy/postgres.sh
deploy/mongo.sh
deploy/kafka.sh
deploy/fhir-check.sh install   # HAPI FHIR's validator, which api/tests/fhir.rs runs
deploy/hl7-check.sh install    # HAPI HL7v2, which api/tests/hl7.rs runs
export LIS_KAFKA_BROKERS="127.0.0.1:${LIS_KAFKA_PORT:-9092}"
export LIS_MONGO_URL="${LIS_MONGO_URL:-mongodb://127.0.0.1:${LIS_MONGO_PORT:-27017}/?directConnection=true}"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "Kubernetes manifests against the API's schemas"
deploy/k8s-check.sh
log "Dockerfile lint"
deploy/dockerfile-check.sh
log "cargo test"
results="$(mktemp)"
cargo test --workspace --locked 2>&1 | tee "$results"
log "schemathesis against /openapi.json"
deploy/schemathesis.sh

# One closing line for the whole run: the sum of every test binary's results.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
rm -f "$results"
