#!/usr/bin/env bash
# A local BigQuery API for tests and trials: the `bqemulator` package from PyPI (REST + gRPC, DuckDB inside).
#
#   deploy/local/bigquery_emulator.sh up       place DuckDB's spatial extension, start, wait until it serves
#   deploy/local/bigquery_emulator.sh down     stop it
#   deploy/local/bigquery_emulator.sh status   exit 0 and print the endpoint when it runs, exit 3 when it does not
#
# The emulator loads DuckDB's spatial extension at start and cannot download it here; PyPI's
# duckdb-extension-spatial wheel (a dev dependency) ships the file, copied into DuckDB's extension directory.
# Ports: JOURNEYS_BQ_PORT (REST, default 19050), +1 gRPC. In-memory: a restart starts empty.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
state=${JOURNEYS_LOCAL_DIR:-$root/.local}/bigquery
port=${JOURNEYS_BQ_PORT:-19050}
python=${JOURNEYS_PYTHON:-$root/.venv/bin/python}
pidfile=$state/emulator-$port.pid
log=$state/emulator-$port.log

say() { printf 'bigquery emulator: %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
running_pid() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && cat "$pidfile"
}

place_spatial_extension() {
  "$python" - <<'PY'
import pathlib, shutil, duckdb, duckdb_extension_spatial
version = duckdb.__version__ if duckdb.__version__.startswith("v") else "v" + duckdb.__version__
platform = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
shipped = next(pathlib.Path(duckdb_extension_spatial.__file__).parent.glob(f"extensions/{version}/spatial.duckdb_extension"))
target = pathlib.Path.home() / ".duckdb" / "extensions" / version / platform / "spatial.duckdb_extension"
if not target.exists() or target.stat().st_size != shipped.stat().st_size:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped, target)
PY
}

up() {
  if pid=$(running_pid); then say "running (pid $pid) at http://127.0.0.1:$port"; return 0; fi
  mkdir -p "$state"
  place_spatial_extension
  "$(dirname "$python")/bqemulator" start --rest-port "$port" --grpc-port $((port + 1)) --project journeys-local \
    --log-level warning >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if port_open "$port"; then say "serving at http://127.0.0.1:$port"; return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { say "exited; see $log"; tail -20 "$log" >&2; return 1; }
    sleep 0.5
  done
  say "did not serve within 60 s; see $log"; return 1
}

down() {
  if pid=$(running_pid); then kill "$pid"; for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running_pid >/dev/null; then echo "http://127.0.0.1:$port"; else exit 3; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
