#!/usr/bin/env bash
# Runs one of the external Java checkers of the API's answers (not part of the product):
# deploy/NAME/pom.xml names the jars it needs, fetched once from Maven Central, and
# deploy/NAME/MAIN.java is the program, compiled again whenever it changes. Owns
# /var/tmp/lisledger-NAME (under LIS_CHECK_DIR in place of /var/tmp, if set):
#   jars/     the jars (deploy/maven-jars.sh)
#   classes/  MAIN.java compiled
# Usage: deploy/java-check.sh NAME MAIN JAR-PREFIX install   fetch and compile (idempotent)
#        deploy/java-check.sh NAME MAIN JAR-PREFIX FILE…    check; exit 1 on any error
# Wrapped by deploy/fhir-check.sh and deploy/hl7-check.sh.
# Needs a JDK 17+ (javac): JAVA_HOME's, else the one on PATH, else Debian's, installed here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ "$#" -ge 4 ] || { echo "usage: $0 NAME MAIN JAR-PREFIX install | FILE…" >&2; exit 1; }
name="$1" main="$2" prefix="$3"
shift 3
state="${LIS_CHECK_DIR:-/var/tmp}/lisledger-$name"
jars="$state/jars"
classes="$state/classes"
pom="$here/$name/pom.xml"
source_file="$here/$name/$main.java"

log() { printf '[%s-check] %s\n' "$name" "$*" >&2; }
die() { log "$*"; exit 1; }

java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
javac_bin="${JAVA_HOME:+$JAVA_HOME/bin/}javac"

ensure_jars() { # fetched once; again only when the pom changes
  "$here/maven-jars.sh" "$pom" "$jars" "$prefix"
}

ensure_classes() { # compiled once per version of MAIN.java and of the jars
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

ensure_jars
ensure_classes
major="$(java_major "$java_bin")"
[ "${major:-0}" -ge 17 ] || die "$java_bin is Java ${major:-unknown}; the checkers need 17 or newer: set JAVA_HOME"
if [ "$1" = install ]; then
  log "ready ($(ls "$jars" | grep -c '\.jar$') jars in $jars)"
  exit 0
fi
exec "$java_bin" -Xmx512m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
  -cp "$classes:$jars/*" "$main" "$@"
