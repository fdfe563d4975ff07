#!/usr/bin/env bash
# The local Prefect server `make demo` releases through, so that its UI shows the release
# afterwards: `prefect server start` (SQLite under $PREFECT_HOME, no cloud), a process
# worker on the `release` pool and the warm engine its flow runs are forked from
# (flows/warm_engine.py), all in the background and reused while they run.
#
#   scripts/local-prefect.sh up          start what is not running (idempotent); print the URL
#   scripts/local-prefect.sh down        stop the worker, its warm engine and the server (data kept)
#   scripts/local-prefect.sh exec CMD... run CMD against that server (PREFECT_API_URL, PREFECT_HOME)
#
# RELEASE_PREFECT_PORT (default 4200) is its port; PREFECT_HOME (default
# $RELEASE_STATE_DIR/prefect) holds its database, logs and pid files. Prefect's telemetry
# is off (PREFECT_SERVER_ANALYTICS_ENABLED=false) unless you set that variable to true, and
# the UI shows no upgrade prompts (PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR="${RELEASE_STATE_DIR:-/var/lib/rhesis-release}"
PORT="${RELEASE_PREFECT_PORT:-4200}"
PREFECT="${VENV:-.venv}/bin/prefect"
# The worker starts each flow run as `python -m prefect.engine` (prefect.yaml): this venv's.
export PATH="$(cd "${VENV:-.venv}/bin" && pwd):$PATH"
export PREFECT_HOME="${PREFECT_HOME:-$STATE_DIR/prefect}"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="${PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT:-false}"
SERVER_PID="$PREFECT_HOME/local-server.pid"
WORKER_PID="$PREFECT_HOME/local-worker.pid"
ENGINE_PID="$PREFECT_HOME/local-warm-engine.pid"
# The worker's flow runs are forked from a warm engine (flows/warm_engine.py) listening here.
export RELEASE_WARM_ENGINE="$PREFECT_HOME/warm-engine.sock"
UI_URL="http://127.0.0.1:$PORT"

log() { printf '[prefect] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

running() {  # running PIDFILE [WORD]: the process it names is alive and is one of ours
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && grep -qa "${2:-prefect}" "/proc/$pid/cmdline" 2>/dev/null
}

healthy() { curl -fsS -o /dev/null --max-time 5 "$PREFECT_API_URL/health" 2>/dev/null; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start() {  # start PIDFILE LOG CMD...: in its own session, detached from this terminal
    local pidfile="$1" logfile="$2"; shift 2
    setsid nohup "$@" >"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

wait_healthy() {
    # The database is migrated already, so this waits for the process, not for a budget: it
    # fails when the server exits, or if it is still not answering after 10 minutes.
    local deadline=$((SECONDS + 600))
    until healthy; do
        running "$SERVER_PID" || die "the server exited: see $PREFECT_HOME/server.log
$(tail -n 20 "$PREFECT_HOME/server.log" 2>/dev/null)"
        [ "$SECONDS" -lt "$deadline" ] || die "the server is not answering: see $PREFECT_HOME/server.log"
        sleep 0.5
    done
}

up_server() {
    if running "$SERVER_PID"; then
        wait_healthy
        log "server: already running at $UI_URL"
        return
    fi
    if port_taken; then
        die "127.0.0.1:$PORT is taken by another process, not the server this script starts: stop it, or pick another port (RELEASE_PREFECT_PORT=4300 make demo)"
    fi
    mkdir -p "$PREFECT_HOME" && chmod 700 "$PREFECT_HOME"
    # Migrate ahead of the start, with no startup budget to race (the first time it creates
    # the SQLite database and runs every migration: tens of seconds on a busy machine).
    log "server: migrating its database in $PREFECT_HOME"
    "$PREFECT" server database upgrade -y >"$PREFECT_HOME/migrate.log" 2>&1 \
        || die "migrating the Prefect database failed: see $PREFECT_HOME/migrate.log"
    log "server: starting at $UI_URL (log: $PREFECT_HOME/server.log)"
    start "$SERVER_PID" "$PREFECT_HOME/server.log" \
        "$PREFECT" server start --host 127.0.0.1 --port "$PORT"
    wait_healthy
}

up_engine() {
    if running "$ENGINE_PID" warm_engine; then
        log "warm engine: already running"
        return
    fi
    log "warm engine: starting (log: $PREFECT_HOME/warm-engine.log)"
    start "$ENGINE_PID" "$PREFECT_HOME/warm-engine.log" \
        "${VENV:-.venv}/bin/python" -m flows.warm_engine --socket "$RELEASE_WARM_ENGINE"
    local deadline=$((SECONDS + 600))  # it imports Prefect and the flows first
    until grep -q "ready on" "$PREFECT_HOME/warm-engine.log" 2>/dev/null; do
        running "$ENGINE_PID" warm_engine || die "the warm engine exited: see $PREFECT_HOME/warm-engine.log
$(tail -n 20 "$PREFECT_HOME/warm-engine.log" 2>/dev/null)"
        [ "$SECONDS" -lt "$deadline" ] || die "the warm engine is not ready: see $PREFECT_HOME/warm-engine.log"
        sleep 0.2
    done
}

up_worker() {
    if running "$WORKER_PID"; then
        log "worker: already polling the release pool"
        return
    fi
    log "worker: starting on the release pool (log: $PREFECT_HOME/worker.log)"
    start "$WORKER_PID" "$PREFECT_HOME/worker.log" \
        "$PREFECT" worker start --pool release --type process --name local
}

stop() {  # stop NAME PIDFILE [WORD]: the process group it started, then wait for it to end
    local name="$1" pidfile="$2" pid
    if ! running "$pidfile" "${3:-prefect}"; then
        log "$name: not running"
        rm -f "$pidfile"
        return
    fi
    pid="$(cat "$pidfile")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    rm -f "$pidfile"
    log "$name: stopped"
}

case "${1:-}" in
    up) up_server; up_engine; up_worker; log "UI: $UI_URL" ;;
    down) stop worker "$WORKER_PID"; stop "warm engine" "$ENGINE_PID" warm_engine; stop server "$SERVER_PID" ;;
    exec) shift; exec "$@" ;;
    *) die "usage: $0 up|down|exec CMD..." ;;
esac
