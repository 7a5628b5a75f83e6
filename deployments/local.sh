#!/usr/bin/env bash
# Local Prefect server path (loopback only; SQLite, or PostgreSQL from Debian's package with --postgres):
#   deployments/local.sh up [--postgres]  start server, create the process pool, deploy prefect.yaml, start a worker
#   deployments/local.sh run     prefect deployment run synth-and-eval/synth-and-eval --watch
#   deployments/local.sh worker  (re)start the worker alone
#   deployments/local.sh down    stop worker, server (and the PostgreSQL server it started)
# State (SQLite, logs, pids) lives in $PREFECT_HOME (default: ./.prefect-server). With --postgres, a PostgreSQL
# server of its own: data directory $MOTFM_PG_DATA (default $PREFECT_HOME/pgdata), 127.0.0.1:$MOTFM_PG_PORT
# (default 5433), database and superuser "prefect", trust authentication on loopback only (a local set-up: use a
# password and TLS for a shared one). Run as root, PostgreSQL runs as the "postgres" user, which must be able to
# reach the data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect-server}"
PORT="${MOTFM_PREFECT_PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_EXTRA_LOGGERS=motfm_core
PREFECT=".venv/bin/prefect"
POOL=motfm-process
mkdir -p "$PREFECT_HOME"

PG_PORT="${MOTFM_PG_PORT:-5433}"
PG_DATA="${MOTFM_PG_DATA:-$PREFECT_HOME/pgdata}"

pg() {  # run a PostgreSQL program as the user that may run it (never root)
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$bin" ] || { echo "PostgreSQL not installed: apt-get install postgresql (or make postgres)"; exit 1; }
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin/$1" "${@:2}"; else "$bin/$1" "${@:2}"; fi
}

postgres_up() {
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DATA" && chmod 700 "$PG_DATA"
    pg initdb -D "$PG_DATA" -U prefect --auth=trust -E UTF8 >"$PREFECT_HOME/postgres-init.log" 2>&1 \
      || { echo "initdb failed (can the postgres user reach $PG_DATA?); see $PREFECT_HOME/postgres-init.log"; exit 1; }
  fi
  pg pg_ctl -D "$PG_DATA" -w -t 60 -l "$PG_DATA/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k ''" start >/dev/null \
    || { echo "PostgreSQL did not start; see $PG_DATA/server.log"; exit 1; }
  pg psql -h 127.0.0.1 -p "$PG_PORT" -U prefect -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='prefect'" \
    | grep -q 1 || pg createdb -h 127.0.0.1 -p "$PG_PORT" -U prefect prefect
  echo "$PG_DATA" >"$PREFECT_HOME/postgres.data"
  export PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect@127.0.0.1:$PG_PORT/prefect"
}

postgres_down() {
  [ -f "$PREFECT_HOME/postgres.data" ] || return 0
  pg pg_ctl -D "$(cat "$PREFECT_HOME/postgres.data")" -m fast -w stop >/dev/null 2>&1 || true
  rm -f "$PREFECT_HOME/postgres.data"
}

up() {
  test -x "$PREFECT" || make venv
  SECONDS=0
  if [ "${1:-}" = "--postgres" ]; then postgres_up; echo "postgres: ready on 127.0.0.1:$PG_PORT in ${SECONDS}s"; fi
  if ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
    setsid "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
    echo $! >"$PREFECT_HOME/server.pid"
    for _ in $(seq 120); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
    curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start; see $PREFECT_HOME/server.log"; exit 1; }
    echo "server: healthy after ${SECONDS}s"
  fi
  "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process
  # GPU stages (tag motfm-gpu) of all runs share MOTFM_GPU_SLOTS slots: two runs never oversubscribe a GPU
  "$PREFECT" concurrency-limit create motfm-gpu "${MOTFM_GPU_SLOTS:-1}" >/dev/null  # an upsert: follows the variable
  echo "pool and GPU limit: ready after ${SECONDS}s"
  "$PREFECT" --no-prompt deploy --all
  echo "deployments: created after ${SECONDS}s"
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
  postgres_down
}

case "${1:-}" in
  up) up "${2:-}" ;;
  run) shift; "$PREFECT" deployment run synth-and-eval/synth-and-eval --watch "$@" ;;
  down) down ;;
  worker) stop worker; worker ;;  # (re)start the worker alone, e.g. after it was killed
  *) echo "usage: $0 up [--postgres]|run|worker|down"; exit 2 ;;
esac
