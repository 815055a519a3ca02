#!/usr/bin/env bash
# Installs (PyPI, pinned secantusdb==0.7.0b3 in its own virtualenv) and starts SecantusDB, a
# MongoDB-wire-protocol server, on 127.0.0.1 for local development and tests.
# Usage: deploy/mongo.sh [start|stop|restart|status]   (default: start)
# Idempotent: installs only what is missing, starts the server only if nothing answers yet.
# State (venv, data, pid file, log) lives in ${LIS_MONGO_DIR:-/var/tmp/lisledger-mongo}; the data
# directory survives restarts. LIS_MONGO_STORAGE=:memory: gives an ephemeral store instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/lib.sh
. "$here/lib.sh"
log() { printf '[mongo] %s\n' "$*" >&2; }

SECANTUS_VERSION="0.7.0b3"
LIS_MONGO_HOST="127.0.0.1"
LIS_MONGO_PORT="${LIS_MONGO_PORT:-27017}"
LIS_MONGO_DIR="${LIS_MONGO_DIR:-/var/tmp/lisledger-mongo}"
LIS_MONGO_STORAGE="${LIS_MONGO_STORAGE:-${LIS_MONGO_DIR}/data}"
LIS_MONGO_WAIT="${LIS_MONGO_WAIT:-60}"
LIS_MONGO_PYTHON="${LIS_MONGO_PYTHON:-python3}"
export LIS_MONGO_URL="${LIS_MONGO_URL:-mongodb://${LIS_MONGO_HOST}:${LIS_MONGO_PORT}/?directConnection=true}"

venv="$LIS_MONGO_DIR/venv"
site="$LIS_MONGO_DIR/site" # used only when `python3 -m venv` is unavailable
pidfile="$LIS_MONGO_DIR/secantusd.pid"
logfile="$LIS_MONGO_DIR/secantusd.log"
config="$here/mongo/secantusd.toml"
ping_py="$here/mongo/ping.py"

py=()     # the interpreter that has secantusdb + pymongo, with PYTHONPATH if needed
server=() # the server command, without flags

use_venv() {
  py=("$venv/bin/python")
  server=("$venv/bin/secantusd-py")
}
use_site() {
  py=(env "PYTHONPATH=$site" "$LIS_MONGO_PYTHON")
  server=(env "PYTHONPATH=$site" "$LIS_MONGO_PYTHON" -c 'import sys; from secantus.cli import main; sys.exit(main())')
}

installed() {
  "${py[@]}" - "$SECANTUS_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import pymongo, secantus.cli  # noqa: F401
sys.exit(0 if version("secantusdb") == sys.argv[1] else 1)
PY
}

venv_ok() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; }

install() {
  mkdir -p "$LIS_MONGO_DIR"
  if [ -x "$venv/bin/python" ]; then use_venv; installed && return 0; fi
  if [ -d "$site/secantus" ]; then use_site; installed && return 0; fi
  if venv_ok || { rm -rf "$venv"; "$LIS_MONGO_PYTHON" -m venv "$venv" >/dev/null 2>&1 && venv_ok; }; then
    use_venv
    log "installing secantusdb==${SECANTUS_VERSION} and pymongo into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "secantusdb==${SECANTUS_VERSION}" pymongo >&2
  else
    rm -rf "$venv"
    log "'$LIS_MONGO_PYTHON -m venv' is unavailable: falling back to 'pip install --target $site'"
    use_site
    PIP_ROOT_USER_ACTION=ignore "$LIS_MONGO_PYTHON" -m pip install -q --disable-pip-version-check \
      --no-warn-conflicts --upgrade --target "$site" "secantusdb==${SECANTUS_VERSION}" pymongo >&2
  fi
  installed || { log "secantusdb==${SECANTUS_VERSION} is still not importable after install"; exit 1; }
}

answering() { "${py[@]}" "$ping_py" "$LIS_MONGO_URL" "${1:-1000}" 2>/dev/null; }

# Prints the pid from the pid file if that process is alive and is a SecantusDB server.
server_pid() {
  local pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q secantus || return 1
  printf '%s\n' "$pid"
}

start() {
  install
  local info pid
  if info="$(answering)"; then
    log "already answering on ${LIS_MONGO_HOST}:${LIS_MONGO_PORT} ($info)"
    return 0
  fi
  if ! pid="$(server_pid)"; then
    [ "$LIS_MONGO_STORAGE" = ":memory:" ] || mkdir -p "$LIS_MONGO_STORAGE"
    log "starting SecantusDB ${SECANTUS_VERSION} on ${LIS_MONGO_HOST}:${LIS_MONGO_PORT} (storage: $LIS_MONGO_STORAGE, log: $logfile)"
    printf '\n=== %s start\n' "$(date -u +%FT%TZ)" >>"$logfile"
    # cwd = state dir: the server writes nothing into the repository.
    (cd "$LIS_MONGO_DIR" && exec setsid nohup "${server[@]}" --config "$config" \
      --host "$LIS_MONGO_HOST" --port "$LIS_MONGO_PORT" --storage-path "$LIS_MONGO_STORAGE" \
      </dev/null >>"$logfile" 2>&1 9>&-) &
    pid=$!
    echo "$pid" >"$pidfile"
  else
    log "server process $pid exists but is not answering yet; waiting for it"
  fi
  local deadline=$((SECONDS + LIS_MONGO_WAIT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if info="$(answering)"; then
      log "ready on ${LIS_MONGO_HOST}:${LIS_MONGO_PORT} pid $pid ($info) — $LIS_MONGO_URL"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "SecantusDB (pid $pid) did not answer within ${LIS_MONGO_WAIT}s; last log lines:"
  else
    log "SecantusDB exited during startup; last log lines:"
    rm -f "$pidfile"
  fi
  tail -n 40 "$logfile" >&2 || true
  exit 1
}

stop() {
  local pid
  if ! pid="$(server_pid)"; then
    rm -f "$pidfile"
    log "not running (no live SecantusDB process in $pidfile)"
    return 0
  fi
  log "stopping SecantusDB pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped"; return 0; }
    sleep 0.5
  done
  log "pid $pid still alive after 20s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  install
  local info pid
  if info="$(answering)"; then
    pid="$(server_pid || echo '?')"
    log "answering on ${LIS_MONGO_HOST}:${LIS_MONGO_PORT} pid $pid ($info)"
    return 0
  fi
  log "not answering on ${LIS_MONGO_HOST}:${LIS_MONGO_PORT}"
  return 1
}

mkdir -p "$LIS_MONGO_DIR"
# One run at a time: two concurrent starts must not launch two servers.
exec 9>"$LIS_MONGO_DIR/.lock"
flock -w $((LIS_MONGO_WAIT + 300)) 9 || { log "could not take $LIS_MONGO_DIR/.lock"; exit 1; }

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) log "usage: $0 [start|stop|restart|status]"; exit 2 ;;
esac
