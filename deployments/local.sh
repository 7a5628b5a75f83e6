#!/usr/bin/env bash
# Local Prefect server path (loopback only; SQLite, or PostgreSQL from Debian's package with --postgres):
#   deployments/local.sh up [--postgres]  start server, create the process pool, deploy prefect.yaml, start a worker
#   deployments/local.sh run     prefect deployment run synth-and-eval/synth-and-eval --watch
#   deployments/local.sh worker  (re)start the worker alone
#   deployments/local.sh down    stop worker, server (and the PostgreSQL server it started)
# State (SQLite, logs, pids) lives in $PREFECT_HOME (default: ./.prefect-server). With --postgres, a PostgreSQL
# server of its own: data directory $MOTFM_PG_DATA (default $PREFECT_HOME/pgdata), 127.0.0.1:$MOTFM_PG_PORT
# (default 5433), password authentication (scram-sha-256) for every role: the superuser "postgres" administers,
# the server connects as "prefect", an ordinary role owning only its database. Their random passwords are kept in
# $PREFECT_HOME/postgres-admin.secret and postgres.secret (mode 600); Prefect gets the connection in parts and
# URL-encodes the password itself. Run as root, PostgreSQL runs as the "postgres" user, which must be able to
# reach the data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect-server}"
PORT="${MOTFM_PREFECT_PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_EXTRA_LOGGERS=motfm_core
# the server streams flow-run logs out (off by default), so `prefect deployment run ... --watch` shows a run's own
# lines, a failure's reason included, and not only its state changes
export PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED=true PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED=true
PREFECT=".venv/bin/prefect"
PY=".venv/bin/python"
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

new_secret() {  # a random password in a file only its owner reads
  [ -s "$1" ] || (umask 077 && "$PY" -c "import secrets; print(secrets.token_urlsafe(24))" >"$1")
}

postgres_up() {
  new_secret "$PREFECT_HOME/postgres-admin.secret"
  new_secret "$PREFECT_HOME/postgres.secret"
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DATA" && chmod 700 "$PG_DATA"
    pwfile="$(mktemp)"  # initdb reads the superuser's password from a file the postgres user can read
    cat "$PREFECT_HOME/postgres-admin.secret" >"$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
    pg initdb -D "$PG_DATA" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 \
      >"$PREFECT_HOME/postgres-init.log" 2>&1 || { rm -f "$pwfile"
      echo "initdb failed (can the postgres user reach $PG_DATA?); see $PREFECT_HOME/postgres-init.log"; exit 1; }
    rm -f "$pwfile"
  elif grep -q trust "$PG_DATA/pg_hba.conf"; then
    echo "$PG_DATA was created with trust authentication by an older local.sh; remove it (or set MOTFM_PG_DATA)"
    exit 1
  fi
  pg pg_ctl -D "$PG_DATA" -w -t 60 -l "$PG_DATA/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k ''" start >/dev/null \
    || { echo "PostgreSQL did not start; see $PG_DATA/server.log"; exit 1; }
  # the password travels as a psql variable (quoted by psql), never inside the SQL text
  PGPASSWORD="$(cat "$PREFECT_HOME/postgres-admin.secret")" pg psql -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -d postgres -v ON_ERROR_STOP=1 -q -v pw="$(cat "$PREFECT_HOME/postgres.secret")" <<'SQL' >/dev/null
SELECT 'CREATE ROLE prefect LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') \gexec
ALTER ROLE prefect NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS LOGIN PASSWORD :'pw';
SELECT 'CREATE DATABASE prefect OWNER prefect' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect') \gexec
SQL
  echo "$PG_DATA" >"$PREFECT_HOME/postgres.data"
  export PREFECT_SERVER_DATABASE_DRIVER=postgresql+asyncpg PREFECT_SERVER_DATABASE_HOST=127.0.0.1 \
    PREFECT_SERVER_DATABASE_PORT="$PG_PORT" PREFECT_SERVER_DATABASE_USER=prefect PREFECT_SERVER_DATABASE_NAME=prefect
  PREFECT_SERVER_DATABASE_PASSWORD="$(cat "$PREFECT_HOME/postgres.secret")"
  export PREFECT_SERVER_DATABASE_PASSWORD
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
