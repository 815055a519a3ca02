#!/usr/bin/env bash
# Checks FHIR R4 JSON against the specification with HAPI FHIR's validator (Java, from
# Maven Central), offline. An external checker of the API's FHIR answers, not part of
# the product. Owns ${LIS_FHIR_DIR:-/var/tmp/lisledger-fhir}:
#   jars/     the validator's jars, fetched once with Maven from deploy/fhir/pom.xml
#   classes/  deploy/fhir/FhirCheck.java compiled, again whenever it changes
#   jars.mvn.log  Maven's output
# Usage: deploy/fhir-check.sh install     fetch and compile (idempotent)
#        deploy/fhir-check.sh FILE…       validate; prints each message, exit 1 on any error
# Needs a JDK 17+ (javac): JAVA_HOME's, else the one on PATH, else Debian's, installed here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${LIS_FHIR_DIR:-/var/tmp/lisledger-fhir}"
jars="$state/jars"
classes="$state/classes"
pom="$here/fhir/pom.xml"
source_file="$here/fhir/FhirCheck.java"

log() { printf '[fhir-check] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
javac_bin="${JAVA_HOME:+$JAVA_HOME/bin/}javac"

ensure_jars() { # fetched once; again only when the pom changes
  "$here/maven-jars.sh" "$pom" "$jars" hapi-fhir-validation-
}

ensure_classes() { # compiled once per version of FhirCheck.java and of the jars
  local want
  want="$(cat "$source_file" "$jars/.pom.sha256" | sha256sum | cut -d' ' -f1)"
  if [ -f "$classes/.sha256" ] && [ "$(cat "$classes/.sha256")" = "$want" ]; then
    return 0
  fi
  if ! command -v "$javac_bin" >/dev/null 2>&1; then
    [ -z "${JAVA_HOME:-}" ] || die "no javac in JAVA_HOME=$JAVA_HOME"
    log "installing OpenJDK 17 (Debian package) for javac"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless >/dev/null
  fi
  rm -rf "$classes.tmp" && mkdir -p "$classes.tmp"
  "$javac_bin" -nowarn -d "$classes.tmp" -cp "$jars/*" "$source_file" >&2
  printf '%s\n' "$want" > "$classes.tmp/.sha256"
  rm -rf "$classes"
  mv "$classes.tmp" "$classes"
}

java_major() { # the major version of the java binary $1, or nothing
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n 1
}

[ "$#" -ge 1 ] || die "usage: $0 install | FILE…"
ensure_jars
ensure_classes
major="$(java_major "$java_bin")"
[ "${major:-0}" -ge 17 ] || die "$java_bin is Java ${major:-unknown}; HAPI FHIR needs 17 or newer: set JAVA_HOME"
if [ "$1" = install ]; then
  log "ready ($(ls "$jars" | grep -c '\.jar$') jars in $jars)"
  exit 0
fi
exec "$java_bin" -Xmx512m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
  -cp "$classes:$jars/*" FhirCheck "$@"
