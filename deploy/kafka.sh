#!/usr/bin/env bash
# Installs and runs a local Apache Kafka broker for LIS Ledger: one node in KRaft mode
# (broker and controller in one JVM) on 127.0.0.1, built from Kafka's jars on Maven Central.
# This script owns the state directory ${LIS_KAFKA_DIR:-/var/tmp/lisledger-kafka}:
#   jars/    Kafka's jars, fetched once with Maven from deploy/kafka/pom.xml
#   config/  server.properties and log4j2 configs, generated from deploy/kafka/*.in each start
#   data/    the broker's log.dirs (topics, KRaft metadata), formatted once with a random cluster id
#   logs/    server.log (the broker's log4j2 output), stdout.log (the JVM's own output, last
#            start only) and format.log; mvn's output is in jars.mvn.log
#   kafka.pid
# Usage: deploy/kafka.sh [start]   idempotent: a broker already answering is only reported
#        deploy/kafka.sh stop      stops the broker started here (by pid) and waits for it
#        deploy/kafka.sh status    exit 0 when the broker answers metadata requests
#        deploy/kafka.sh topics …  runs Kafka's TopicCommand against the broker, e.g. `topics --list`
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

state="${LIS_KAFKA_DIR:-/var/tmp/lisledger-kafka}"
port="${LIS_KAFKA_PORT:-9092}"
controller_port="${LIS_KAFKA_CONTROLLER_PORT:-9093}"
heap="${LIS_KAFKA_HEAP:-512m}"
ready_timeout="${LIS_KAFKA_READY_TIMEOUT:-90}"
jars="$state/jars"
conf="$state/config"
data="$state/data"
logs="$state/logs"
pidfile="$state/kafka.pid"
pom="$here/kafka/pom.xml"
bootstrap="127.0.0.1:${port}"

log() { printf '[kafka] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- prerequisites -------------------------------------------------------------------------

java_major() { # prints the major version of the java binary $1, or nothing
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n 1
}

find_java() { # sets $java to a Java 17+ binary, installing OpenJDK 17 if there is none
  local candidate
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" \
                   /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(java_major "$candidate")" -ge 17 ] 2>/dev/null; then
      java="$candidate"
      return 0
    fi
  done
  return 1
}

apt_updated=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq "$@" >/dev/null
}

ensure_java() {
  if ! find_java; then
    log "installing OpenJDK 17 (Debian package)"
    apt_install openjdk-17-jre-headless
    find_java || die "no Java 17+ found even after installing openjdk-17-jre-headless"
  fi
}

ensure_jars() { # fetch the jars once; again only when deploy/kafka/pom.xml changes
  "$here/maven-jars.sh" "$pom" "$jars" kafka_2.13-
}

have_jars() { [ -f "$jars/.pom.sha256" ]; }

kafka_version() { ls "$jars"/kafka_2.13-*.jar 2>/dev/null | sed 's/.*kafka_2\.13-\(.*\)\.jar/\1/' | head -n 1; }

# --- the broker ------------------------------------------------------------------------------

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

our_pid() { # prints the pid of the broker started here, if it is still running
  local pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline")" in *' kafka.Kafka '*) ;; *) return 1 ;; esac
  printf '%s\n' "$pid"
}

write_tools_config() {
  mkdir -p "$conf"
  cp "$here/kafka/tools-log4j2.properties" "$conf/tools-log4j2.properties"
  # Bounded waits, so that a check against a broker that is not (yet) there fails fast.
  cat > "$conf/admin.properties" <<CONF
request.timeout.ms=5000
default.api.timeout.ms=10000
CONF
}

topic_command() { # runs Kafka's TopicCommand against the broker; extra arguments are passed on
  write_tools_config
  "$java" -Xmx256m -Dlog4j2.configurationFile="$conf/tools-log4j2.properties" -cp "$jars/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
    --command-config "$conf/admin.properties" "$@"
}

metadata_ok() { topic_command --list >/dev/null 2>&1; }

log_tail() {
  local f
  for f in "$logs/stdout.log" "$logs/server.log"; do
    [ -s "$f" ] || continue
    log "last lines of $f:"
    tail -n 30 "$f" >&2
  done
}

wait_ready() { # waits until the port accepts connections and metadata requests are answered
  local deadline=$((SECONDS + ready_timeout)) pid="${1:-}"
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      log_tail
      die "the broker (pid $pid) exited during startup"
    fi
    if port_open "$port" && metadata_ok; then
      return 0
    fi
    sleep 1
  done
  log_tail
  die "the broker did not answer on $bootstrap within ${ready_timeout}s"
}

render() { # render TEMPLATE OUTPUT: fills in the @...@ values
  sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" \
      -e "s|@DATA_DIR@|$data|g" -e "s|@LOG_DIR@|$logs|g" "$1" > "$2.tmp"
  mv "$2.tmp" "$2"
}

start() {
  local pid cluster_id
  mkdir -p "$state"

  # Already there: report only.
  if pid="$(our_pid)"; then
    ensure_java
    log "broker already running (pid $pid); waiting for it to answer"
    wait_ready "$pid"
    log "Kafka $(kafka_version) ready on $bootstrap (pid $pid, already running, state $state)"
    return 0
  fi
  if port_open "$port"; then
    ensure_java
    ensure_jars # to check it with Kafka's own client
    metadata_ok || die "127.0.0.1:$port is in use by something that does not answer as a Kafka broker"
    log "a Kafka broker not started by this script already answers on $bootstrap; nothing to do"
    return 0
  fi
  if port_open "$controller_port"; then
    die "controller port 127.0.0.1:$controller_port is in use (set LIS_KAFKA_CONTROLLER_PORT)"
  fi

  ensure_java
  ensure_jars

  mkdir -p "$conf" "$data" "$logs"
  render "$here/kafka/server.properties.in" "$conf/server.properties"
  render "$here/kafka/log4j2.properties.in" "$conf/log4j2.properties"
  write_tools_config

  if [ ! -f "$data/meta.properties" ]; then
    cluster_id="$("$java" -cp "$jars/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [ -n "$cluster_id" ] || die "kafka.tools.StorageTool random-uuid gave no cluster id"
    log "formatting $data (cluster id $cluster_id)"
    "$java" -Dlog4j2.configurationFile="$conf/tools-log4j2.properties" -cp "$jars/*" \
      kafka.tools.StorageTool format --ignore-formatted \
      -t "$cluster_id" -c "$conf/server.properties" >> "$logs/format.log" 2>&1 \
      || { tail -n 20 "$logs/format.log" >&2; die "formatting the storage failed"; }
  fi

  log "starting Kafka $(kafka_version) on $bootstrap (controller 127.0.0.1:$controller_port, heap $heap)"
  rm -f "$pidfile"
  # setsid + nohup: the broker outlives this script and its terminal; the inner shell writes
  # its own pid and then becomes the JVM, so the pid file names the broker itself.
  KAFKA_JAVA="$java" KAFKA_HEAP="$heap" KAFKA_CONF="$conf" KAFKA_LOGS="$logs" KAFKA_JARS="$jars" \
  KAFKA_PIDFILE="$pidfile" setsid nohup bash -c '
    echo $$ > "$KAFKA_PIDFILE"
    exec "$KAFKA_JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -Djava.awt.headless=true -Dkafka.logs.dir="$KAFKA_LOGS" \
      -Dlog4j2.configurationFile="$KAFKA_CONF/log4j2.properties" \
      -cp "$KAFKA_JARS/*" kafka.Kafka "$KAFKA_CONF/server.properties"
  ' > "$logs/stdout.log" 2>&1 < /dev/null &
  for _ in $(seq 1 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [ -n "$pid" ] || die "the broker did not start (no pid file)"

  wait_ready "$pid"
  log "Kafka $(kafka_version) ready on $bootstrap (pid $pid, state $state, log $logs/server.log)"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$pidfile"
    log "no broker started by this script is running"
    return 0
  fi
  log "stopping the broker (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 600); do # a clean shutdown takes a few seconds; wait up to 60 s
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      log "stopped"
      return 0
    fi
    sleep 0.1
  done
  log "the broker did not stop within 60s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  ensure_java
  have_jars || die "not installed (no jars in $jars)"
  local pid who="not started by this script"
  if pid="$(our_pid)"; then who="pid $pid"; fi
  if port_open "$port" && metadata_ok; then
    log "Kafka $(kafka_version) answers on $bootstrap ($who)"
    return 0
  fi
  die "no broker answers on $bootstrap"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  topics)
    shift
    ensure_java
    have_jars || die "not installed: run deploy/kafka.sh first"
    topic_command "$@"
    ;;
  *) die "usage: $0 [start|stop|status|topics ARGS...]" ;;
esac
