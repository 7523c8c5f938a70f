#!/usr/bin/env bash
# A local Apache Flink 1.19 session cluster for Beam pipelines, on loopback: JobManager (web UI), one TaskManager
# with 2 slots, Beam's Flink job server and a Python SDK worker pool beside the TaskManager.
#
#   deploy/flink/flink.sh fetch    build the job-server jar (pom.xml here) and unpack Flink from PyPI's
#                                  apache-flink-libraries sdist, which carries flink-dist; idempotent
#   deploy/flink/flink.sh up       fetch, then start what is not running and wait until each part serves
#   deploy/flink/flink.sh down     stop all parts (SIGTERM, then SIGKILL after a grace period)
#   deploy/flink/flink.sh status   exit 0 when every part runs, 3 when one does not; prints each part
#   deploy/flink/flink.sh logs [PART] [N]   the tail of a part's log (jobmanager, taskmanager, jobserver, workers)
#   deploy/flink/flink.sh start-taskmanager   start the TaskManager alone (after it died or was killed)
#
# A supervisor (part of `up`) starts the TaskManager again within seconds when it exits, as a cluster manager would:
# a TaskManager shuts itself down on a fault it deems fatal, and jobs then wait for slots until one returns.
#
# Everything it writes is under $JOURNEYS_LOCAL_DIR/flink (default: <repo>/.local/flink, gitignored): jars,
# config, logs, pid files, checkpoints and savepoints.
# Ports: JOURNEYS_FLINK_PORT (web UI and REST, default 18081); the JobManager's RPC +1, blob server +2, the job
# server's job, artifact and expansion services +3..+5, the SDK worker pool +6.
# Memory: JOURNEYS_FLINK_TASKMANAGER_MEMORY (the TaskManager's process size, default 4096m) and
# JOURNEYS_FLINK_MANAGED_FRACTION (its share for RocksDB and batch sorting, default Flink's 0.4).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
state=${JOURNEYS_LOCAL_DIR:-$root/.local}/flink
python=${JOURNEYS_PYTHON:-$root/.venv/bin/python}
flink_version=1.19.3  # apache-flink-libraries on PyPI; the runner is built against 1.19.0 (same minor)
rest_port=${JOURNEYS_FLINK_PORT:-18081}
rpc_port=$((rest_port + 1))
blob_port=$((rest_port + 2))
job_port=$((rest_port + 3))
artifact_port=$((rest_port + 4))
expansion_port=$((rest_port + 5))
worker_port=$((rest_port + 6))
host=localhost
dist=$state/dist
jar=$state/beam-flink-job-server.jar
conf=$state/conf
logs=$state/logs
start_timeout=${JOURNEYS_FLINK_START_TIMEOUT:-120}
taskmanager_memory=${JOURNEYS_FLINK_TASKMANAGER_MEMORY:-4096m}
managed_fraction=${JOURNEYS_FLINK_MANAGED_FRACTION:-0.4}
parts=(jobmanager taskmanager jobserver workers supervisor)

say() { printf 'flink: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# What identifies each part's process in /proc/PID/cmdline (pids get reused).
signature() {
  case "$1" in
    jobmanager) echo "StandaloneSessionClusterEntrypoint --configDir $conf" ;;
    taskmanager) echo "TaskManagerRunner --configDir $conf" ;;
    jobserver) echo "FlinkJobServerDriver --flink-master=$host:$rest_port" ;;
    workers) echo "worker_pool_main --service_port=$worker_port" ;;
    supervisor) echo "$here/flink.sh supervise $rest_port" ;;
  esac
}

running_pid() {
  local pidfile=$state/$1.pid pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$(signature "$1")" || return 1
  echo "$pid"
}

fetch_jobserver() {
  local stamp=$state/.jobserver.sha256 want build=$state/build
  # rebuilt when the pom, the patch or its helper change
  want=$(cat "$here/pom.xml" "$here/patch_beam.py" "$here"/src/journeys/flink/*.java | sha256sum | cut -d' ' -f1)
  if [ -f "$jar" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  say "building the Beam Flink job server from Maven Central modules into $jar"
  rm -rf "$build" && mkdir -p "$build"
  cp -r "$here/pom.xml" "$here/patch_beam.py" "$here/src" "$build/"
  mvn -q -B -Dstyle.color=never -f "$build/pom.xml" package >&2
  mv "$build/target/beam-flink-job-server.jar" "$jar"
  rm -rf "$build"
  echo "$want" >"$stamp"
}

fetch_flink() {
  [ -f "$dist/lib/flink-dist-$flink_version.jar" ] && [ -f "$dist/bin/bash-java-utils.jar" ] && return 0
  say "unpacking Flink $flink_version (PyPI apache-flink-libraries sdist) into $dist"
  local tmp
  tmp=$(mktemp -d)
  "$python" -m pip download -q --no-deps --no-binary :all: "apache-flink-libraries==$flink_version" -d "$tmp" >&2
  tar -xzf "$tmp"/apache-flink-libraries-*.tar.gz -C "$tmp" --wildcards '*/deps/lib/*' '*/deps/bin/*'
  rm -rf "$dist" && mkdir -p "$dist"
  mv "$tmp"/apache-flink-libraries-*/deps/lib "$tmp"/apache-flink-libraries-*/deps/bin "$dist/"
  rm -rf "$tmp"
}

fetch() {
  mkdir -p "$state"
  fetch_jobserver
  fetch_flink
}

write_config() {
  mkdir -p "$conf" "$logs" "$state/checkpoints" "$state/savepoints" "$state/artifacts" "$state/rocksdb-logs"
  cat >"$conf/config.yaml" <<EOF
# written by deploy/flink/flink.sh; edits are overwritten at the next 'up'
jobmanager:
  rpc: {address: $host, port: $rpc_port}
  bind-host: $host
  memory: {process: {size: 1024m}}
taskmanager:
  bind-host: $host
  host: $host
  numberOfTaskSlots: 2
  # Each SDK worker's data streams are Netty buffers in the TaskManager's direct memory; the default 0 bytes of task
  # off-heap leaves them only what the network stack does not use.
  memory: {process: {size: $taskmanager_memory}, task: {off-heap: {size: 512m}}, managed: {fraction: $managed_fraction}}
rest: {port: $rest_port, address: $host, bind-address: $host}
blob: {server: {port: '$blob_port'}}
parallelism: {default: 2}
# Beam's runner classes come from the job-server jar on the cluster's own classpath: a restored job does not reload
# vendored gRPC classes through a per-job class loader that its failed predecessor released.
classloader: {resolve-order: parent-first}
state:
  backend:
    type: rocksdb
    incremental: true
    # RocksDB writes one log per operator instance: beside the state, not among the cluster's logs
    rocksdb: {log: {dir: '$state/rocksdb-logs', level: HEADER_LEVEL}}
  checkpoints: {dir: 'file://$state/checkpoints'}
  savepoints: {dir: 'file://$state/savepoints'}
execution:
  checkpointing:
    externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
    num-retained: 3
restart-strategy:
  type: fixed-delay
  fixed-delay: {attempts: 100, delay: 5 s}
# A killed TaskManager is noticed in seconds, not the default 50.
heartbeat: {interval: 2000, timeout: 10000}
# An error no thread catches (an OutOfMemoryError on a gRPC thread of the SDK's data plane) ends the process: the
# supervisor starts a new TaskManager and the job restarts. Flink's default only logs it, and the tasks then wait
# forever on data that thread would have delivered.
cluster: {uncaught-exception-handling: FAIL}
EOF
  cat >"$conf/log4j.properties" <<EOF
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = \${sys:log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
logger.netty.name = org.apache.flink.shaded.netty4
logger.netty.level = WARN
logger.beamgrpc.name = org.apache.beam.vendor.grpc
logger.beamgrpc.level = WARN
EOF
}

# Flink's own jars first: the job-server jar also carries Flink 1.19.0 classes, which must not shadow 1.19.3's.
classpath() { echo "$dist/lib/*:$jar"; }

# Starts PART's command in a session of its own (it outlives the shell or make that started it) and records the
# command's own pid: setsid forks when its caller leads a process group, and then $! would be the exited parent's.
launch() {
  local part=$1 out=$2
  shift 2
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$state/$part.pid" "$@" </dev/null >>"$out" 2>&1 &
  # until the pid is known and its process has become the command (running_pid matches the command line)
  for _ in $(seq 1 50); do
    [ -s "$state/$part.pid" ] && ! tr '\0' ' ' <"/proc/$(cat "$state/$part.pid")/cmdline" 2>/dev/null |
      grep -q '^bash -c' && return 0
    sleep 0.1
  done
}

java_log() { echo "-Dlog.file=$logs/$1.log -Dlog4j.configurationFile=file://$conf/log4j.properties"; }

start_jobmanager() {
  # shellcheck disable=SC2046
  launch jobmanager "$logs/jobmanager.out" java -Xmx768m $(java_log jobmanager) -cp "$(classpath)" \
    org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint --configDir "$conf"
}

start_taskmanager() {
  # The TaskManager's memory flags and -D settings, as Flink's own taskmanager.sh derives them from the config.
  local params jvm dynamic
  params=$(java -cp "$dist/bin/bash-java-utils.jar:$dist/lib/*" org.apache.flink.runtime.util.bash.BashJavaUtils \
    GET_TM_RESOURCE_PARAMS --configDir "$conf" 2>/dev/null | grep '^BASH_JAVA_UTILS_EXEC_RESULT:' |
    sed 's/^BASH_JAVA_UTILS_EXEC_RESULT://')
  jvm=$(sed -n 1p <<<"$params")
  dynamic=$(sed -n 2p <<<"$params")
  [ -n "$jvm" ] && [ -n "$dynamic" ] || { say "could not derive the TaskManager's memory settings"; exit 1; }
  # shellcheck disable=SC2086,SC2046
  launch taskmanager "$logs/taskmanager.out" java $jvm $(java_log taskmanager) -cp "$(classpath)" \
    org.apache.flink.runtime.taskexecutor.TaskManagerRunner --configDir "$conf" $dynamic
}

start_supervisor() {
  launch supervisor "$logs/supervisor.log" bash "$here/flink.sh" supervise "$rest_port"
}

# Runs until the JobManager is gone (or `down` stops it): a TaskManager that exited is started again.
supervise() {
  while sleep 3; do
    running_pid jobmanager >/dev/null || exit 0
    if ! running_pid taskmanager >/dev/null; then
      say "$(date '+%F %T') the TaskManager is gone (last lines of its log below): starting it again"
      tail -n 5 "$logs/taskmanager.log" >&2 || true
      (start_part taskmanager) || say "the TaskManager did not start; trying again"
    fi
  done
}

start_jobserver() {
  # shellcheck disable=SC2046
  launch jobserver "$logs/jobserver.log" java -Xmx1g $(java_log jobserver) -cp "$jar" \
    org.apache.beam.runners.flink.FlinkJobServerDriver \
    --flink-master="$host:$rest_port" --flink-conf-dir "$conf" --artifacts-dir "$state/artifacts" \
    --job-host $host --job-port "$job_port" --artifact-port "$artifact_port" --expansion-port "$expansion_port"
}

start_workers() {
  # The pool starts each SDK worker through sdk_worker_boot.py (state cache, logs to the TaskManager), whose
  # `python` comes from PATH: the venv's first, or workers lack apache_beam. glibc's malloc as
  # pipelines/runners.py MALLOC_SETTINGS has it (return_freed_memory() says why; the caller's own settings stand).
  local malloc
  malloc=$(PYTHONPATH="$root" "$python" -c 'import os; from pipelines.runners import MALLOC_SETTINGS
print(" ".join(f"{name}={os.environ.get(name, value)}" for name, value in MALLOC_SETTINGS.items()))')
  # shellcheck disable=SC2086
  PATH="$(dirname "$python"):$PATH" launch workers "$logs/workers.log" env $malloc "$python" \
    -m apache_beam.runners.worker.worker_pool_main --service_port=$worker_port \
    --container_executable="$here/sdk_worker_boot.py"
}

ready() {
  case "$1" in
    jobmanager) curl -sf "http://$host:$rest_port/overview" >/dev/null ;;
    taskmanager) curl -sf "http://$host:$rest_port/overview" | grep -q '"taskmanagers":[1-9]' ;;
    jobserver) port_open "$job_port" ;;
    workers) port_open "$worker_port" ;;
    supervisor) true ;;
  esac
}

start_part() {
  local part=$1 started=$SECONDS
  # one start at a time (the supervisor and `start-taskmanager` may both find the TaskManager gone)
  exec 9>"$state/.$part.start.lock"
  flock 9
  if running_pid "$part" >/dev/null; then flock -u 9; return 0; fi
  rm -f "$state/$part.pid"
  "start_$part"
  until ready "$part"; do
    if ! running_pid "$part" >/dev/null; then
      say "$part exited during start; last lines of its log:"
      tail -n 20 "$logs/$part".* >&2 || true
      exit 1
    fi
    if ((SECONDS - started > start_timeout)); then say "$part not up after ${start_timeout}s; see $logs"; exit 1; fi
    sleep 0.5
  done
  flock -u 9
  say "$part up (pid $(cat "$state/$part.pid"))"
}

up() {
  local part port
  declare -A ports=([jobmanager]=$rest_port [jobserver]=$job_port [workers]=$worker_port)
  for part in "${!ports[@]}"; do
    port=${ports[$part]}
    if ! running_pid "$part" >/dev/null && port_open "$port"; then
      say "port $port ($part) is taken by another process; set JOURNEYS_FLINK_PORT"; exit 1
    fi
  done
  fetch
  write_config
  for part in "${parts[@]}"; do start_part "$part"; done
  say "up: web UI http://$host:$rest_port, job server $host:$job_port, SDK worker pool $host:$worker_port"
}

stop_part() {
  local part=$1 pid
  pid=$(running_pid "$part") || { rm -f "$state/$part.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { say "$part: no clean shutdown after 20s; killing"; kill -KILL "$pid" || true; }
  # SDK workers the pool started are its children in its session
  [ "$part" = workers ] && pkill -KILL -s "$pid" 2>/dev/null || true
  rm -f "$state/$part.pid"
}

down() {
  local part
  for part in supervisor jobserver taskmanager jobmanager workers; do stop_part "$part"; done
  say "stopped"
}

status() {
  local part pid missing=0
  for part in "${parts[@]}"; do
    if pid=$(running_pid "$part"); then echo "$part running pid=$pid"; else echo "$part not running"; missing=1; fi
  done
  echo "web UI http://$host:$rest_port  job endpoint $host:$job_port  worker pool $host:$worker_port"
  return $((missing * 3))
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) status ;;
  start-taskmanager) write_config; start_part taskmanager ;;
  supervise) supervise ;;
  logs) part=${2:-jobmanager}; if [ -f "$logs/$part.log" ]; then tail -n "${3:-50}" "$logs/$part.log"; fi ;;
  *) echo "usage: $0 fetch|up|down|status|logs [PART] [N]|start-taskmanager" >&2; exit 2 ;;
esac
