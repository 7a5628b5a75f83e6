#!/usr/bin/env bash
# Local Prefect server path (embedded SQLite, loopback only):
#   deployments/local.sh up      start server, create the process pool, deploy prefect.yaml, start a worker
#   deployments/local.sh run     prefect deployment run synth-and-eval/synth-and-eval --watch
#   deployments/local.sh worker  (re)start the worker alone
#   deployments/local.sh down    stop worker and server
# State (SQLite, logs, pids) lives in $PREFECT_HOME (default: ./.prefect-server).
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect-server}"
PORT="${MOTFM_PREFECT_PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_EXTRA_LOGGERS=motfm_core
PREFECT=".venv/bin/prefect"
POOL=motfm-process
mkdir -p "$PREFECT_HOME"

up() {
  test -x "$PREFECT" || make venv
  if ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
    setsid "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
    echo $! >"$PREFECT_HOME/server.pid"
    for _ in $(seq 120); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
    curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start; see $PREFECT_HOME/server.log"; exit 1; }
  fi
  "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process
  # GPU stages (tag motfm-gpu) of all runs share MOTFM_GPU_SLOTS slots: two runs never oversubscribe a GPU
  "$PREFECT" concurrency-limit inspect motfm-gpu >/dev/null 2>&1 \
    || "$PREFECT" concurrency-limit create motfm-gpu "${MOTFM_GPU_SLOTS:-1}" >/dev/null
  "$PREFECT" --no-prompt deploy --all
  worker
  echo "server: ${PREFECT_API_URL%/api} (UI), worker log: $PREFECT_HOME/worker.log"
  echo "export PREFECT_API_URL=$PREFECT_API_URL"
}

worker() {
  setsid "$PREFECT" worker start --pool "$POOL" >>"$PREFECT_HOME/worker.log" 2>&1 &
  echo $! >"$PREFECT_HOME/worker.pid"
}

stop() {  # stop one of worker/server: its process group, SIGTERM then (after 10 s) SIGKILL
  f="$PREFECT_HOME/$1.pid"
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

down() {
  stop worker
  stop server
}

case "${1:-}" in
  up) up ;;
  run) shift; "$PREFECT" deployment run synth-and-eval/synth-and-eval --watch "$@" ;;
  down) down ;;
  worker) stop worker; worker ;;  # (re)start the worker alone, e.g. after it was killed
  *) echo "usage: $0 up|run|worker|down"; exit 2 ;;
esac
