#!/usr/bin/env bash
# Fetches the jars a pom names from Maven Central into a directory, once: again only
# when the pom changes (its SHA-256 is kept beside the jars). Used by deploy/kafka.sh
# and deploy/java-check.sh (the FHIR and HL7 checkers); installs Maven (Debian package) when it is missing.
# Usage: deploy/maven-jars.sh POM DIR JAR-PREFIX   fails unless DIR then holds JAR-PREFIX*.jar
#        (mvn's output goes to DIR.mvn.log)
set -euo pipefail
pom="$1" jars="$2" expect="$3"

log() { printf '[maven-jars] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

want="$(sha256sum "$pom" | cut -d' ' -f1)"
if [ -f "$jars/.pom.sha256" ] && [ "$(cat "$jars/.pom.sha256")" = "$want" ]; then
  exit 0
fi
if ! command -v mvn >/dev/null 2>&1; then
  log "installing Maven (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq maven >/dev/null
fi
log "fetching the jars of $pom from Maven Central into $jars"
mkdir -p "$(dirname "$jars")"
rm -rf "$jars.tmp"
mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="$jars.tmp" > "$jars.mvn.log" 2>&1 \
  || { tail -n 30 "$jars.mvn.log" >&2; die "mvn dependency:copy-dependencies failed (log: $jars.mvn.log)"; }
ls "$jars.tmp/$expect"*.jar >/dev/null 2>&1 || die "no $expect*.jar in $jars.tmp"
printf '%s\n' "$want" > "$jars.tmp/.pom.sha256"
rm -rf "$jars"
mv "$jars.tmp" "$jars"
