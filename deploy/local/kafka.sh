#!/usr/bin/env bash
# The local Apache Kafka broker: one KRaft node (broker + controller) on loopback.
#
#   deploy/local/kafka.sh fetch    resolve the broker's jars from Maven Central (pom.xml beside this file)
#   deploy/local/kafka.sh up       fetch, format the storage once, start, wait until it serves; idempotent
#   deploy/local/kafka.sh down     stop it (SIGTERM, then SIGKILL after a grace period)
#   deploy/local/kafka.sh status   exit 0 and print the pid when it runs, exit 3 when it does not
#   deploy/local/kafka.sh logs     the tail of the server log
#
# Everything it writes is under $JOURNEYS_LOCAL_DIR (default: <repo>/.local, gitignored).
# Ports: JOURNEYS_KAFKA_PORT (PLAINTEXT, default 19092), +1 the controller, +2 a SASL_PLAINTEXT/PLAIN listener
# whose credentials are generated once into .local/kafka/sasl.env (mode 600) and never printed, +3 a SASL_SSL
# listener (TLS with a certificate from a local CA made once with keytool, SCRAM-SHA-512) whose complete client
# settings are in .local/kafka/scram.env (mode 600; the CA's certificate is .local/kafka/tls/ca.pem): pass it as
# --kafka-env-file. `journeys kafka up` stores its SCRAM user in the cluster (pipelines/kafka_topics.py).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
state=${JOURNEYS_LOCAL_DIR:-$root/.local}/kafka
port=${JOURNEYS_KAFKA_PORT:-19092}
controller_port=$((port + 1))
sasl_port=$((port + 2))
scram_port=$((port + 3))
tls=$state/tls
host=127.0.0.1
libs=$state/libs
pidfile=$state/kafka.pid
log=$state/logs/server.log
start_timeout=${JOURNEYS_KAFKA_START_TIMEOUT:-90}

say() { printf 'kafka: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

running_pid() {
  # The pid from the pid file, if that process is alive and really is our broker (pids get reused).
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $state/server.properties" || return 1
  echo "$pid"
}

fetch() {
  local stamp=$libs/.pom.sha256 want
  want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  say "resolving broker jars from Maven Central into $libs"
  rm -rf "$libs" && mkdir -p "$libs"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  echo "$want" >"$stamp"
}

write_config() {
  mkdir -p "$state/data" "$state/logs"
  if [ ! -f "$state/sasl.env" ]; then
    (umask 077 && printf 'JOURNEYS_KAFKA_SASL_USERNAME=journeys\nJOURNEYS_KAFKA_SASL_PASSWORD=%s\n' \
      "$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')" >"$state/sasl.env")
  fi
  local sasl_user sasl_password
  sasl_user=$(sed -n 's/^JOURNEYS_KAFKA_SASL_USERNAME=//p' "$state/sasl.env")
  sasl_password=$(sed -n 's/^JOURNEYS_KAFKA_SASL_PASSWORD=//p' "$state/sasl.env")
  make_tls_once
  if [ ! -f "$state/scram.env" ]; then
    (umask 077 && printf '%s\n' "JOURNEYS_KAFKA_BOOTSTRAP=$host:$scram_port" "JOURNEYS_KAFKA_SECURITY_PROTOCOL=SASL_SSL" \
      "JOURNEYS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512" "JOURNEYS_KAFKA_SASL_USERNAME=journeys-scram" \
      "JOURNEYS_KAFKA_SASL_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')" \
      "JOURNEYS_KAFKA_SSL_CAFILE=$tls/ca.pem" >"$state/scram.env")
  fi
  # the port may differ from the one the file was written for
  sed -i "s|^JOURNEYS_KAFKA_BOOTSTRAP=.*|JOURNEYS_KAFKA_BOOTSTRAP=$host:$scram_port|" "$state/scram.env"
  local store_password
  store_password=$(cat "$tls/store.password")
  (umask 077 && cat >"$state/server.properties" <<EOF
# written by deploy/local/kafka.sh; edits are overwritten at the next 'up'
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$controller_port
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$controller_port,SASL_PLAINTEXT://$host:$sasl_port,SASL_SSL://$host:$scram_port
advertised.listeners=PLAINTEXT://$host:$port,SASL_PLAINTEXT://$host:$sasl_port,SASL_SSL://$host:$scram_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$store_password
listener.name.sasl_ssl.ssl.key.password=$store_password
log.dirs=$state/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
message.max.bytes=2097152
EOF
  )
  cat >"$state/log4j2.properties" <<EOF
appender.file.type=File
appender.file.name=file
appender.file.fileName=$log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
EOF
}

make_tls_once() {
  # A local CA and the broker's certificate (for 127.0.0.1 and localhost) signed by it, with the JDK's keytool.
  [ -f "$tls/broker.p12" ] && [ -f "$tls/ca.pem" ] && return 0
  rm -rf "$tls" && (umask 077 && mkdir -p "$tls")
  (umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$tls/store.password")
  local pw names="SAN=ip:$host,dns:localhost"
  pw=$(cat "$tls/store.password")
  {
    keytool -genkeypair -alias ca -keyalg RSA -keysize 2048 -dname "CN=customer-journeys local CA" -ext bc:c \
      -validity 3650 -keystore "$tls/ca.p12" -storetype PKCS12 -storepass "$pw"
    keytool -exportcert -rfc -alias ca -keystore "$tls/ca.p12" -storepass "$pw" -file "$tls/ca.pem"
    keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -dname "CN=$host" -ext "$names" -validity 3650 \
      -keystore "$tls/broker.p12" -storetype PKCS12 -storepass "$pw"
    keytool -certreq -alias broker -keystore "$tls/broker.p12" -storepass "$pw" -file "$tls/broker.csr"
    keytool -gencert -alias ca -keystore "$tls/ca.p12" -storepass "$pw" -infile "$tls/broker.csr" \
      -outfile "$tls/broker.pem" -rfc -ext "$names" -validity 3650
    keytool -importcert -noprompt -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" -storepass "$pw"
    keytool -importcert -noprompt -alias broker -file "$tls/broker.pem" -keystore "$tls/broker.p12" -storepass "$pw"
  } >>"$state/logs/tls.log" 2>&1 || { say "making the TLS certificates failed, see $state/logs/tls.log"; exit 1; }
  chmod 644 "$tls/ca.pem"
}

java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$state/log4j2.properties" -cp "$libs/*")

format_once() {
  [ -f "$state/data/meta.properties" ] && return 0
  local cluster_id
  # A KRaft cluster id is 16 random bytes in URL-safe base64; one starting with "-" would read as an option to
  # the storage tool (1 id in 64; it failed a CI run), so draw again.
  cluster_id=-
  while [ "${cluster_id:0:1}" = "-" ]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  say "formatting KRaft storage in $state/data"
  java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" >>"$state/logs/format.log" 2>&1 ||
    { say "format failed, see $state/logs/format.log"; exit 1; }
}

up() {
  local pid
  if pid=$(running_pid); then
    say "already running (pid $pid) on $host:$port"
    return 0
  fi
  # A pid file without its process is what a crash or a killed session leaves behind.
  if [ -f "$pidfile" ]; then say "removing stale pid file"; rm -f "$pidfile"; fi
  if port_open "$port" || port_open "$controller_port"; then
    say "port $port or $controller_port is taken by another process; set JOURNEYS_KAFKA_PORT"
    exit 1
  fi
  fetch
  write_config
  format_once
  local started=$SECONDS started_ns
  started_ns=$(date +%s%N)
  : >"$log"
  # its own session, so that the broker outlives the shell (or make) that started it
  setsid java "${java_opts[@]}" kafka.Kafka "$state/server.properties" </dev/null >"$state/logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  while ! grep -q 'Kafka Server started' "$log" 2>/dev/null; do
    if ! running_pid >/dev/null; then
      say "broker exited during start; last lines of $state/logs/stdout.log and $log:"
      tail -n 20 "$state/logs/stdout.log" "$log" >&2 || true
      rm -f "$pidfile"
      exit 1
    fi
    if ((SECONDS - started > start_timeout)); then
      say "not up after ${start_timeout}s; see $log"
      exit 1
    fi
    sleep 0.2
  done
  say "up on $host:$port (pid $(cat "$pidfile"), started in $((($(date +%s%N) - started_ns) / 1000000)) ms)"
}

down() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pidfile"
    say "not running"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "no clean shutdown after 30s; killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "stopped"
}

status() {
  local pid
  if pid=$(running_pid); then
    echo "running pid=$pid bootstrap=$host:$port sasl_plaintext=$host:$sasl_port sasl_ssl=$host:$scram_port data=$state/data"
  else
    echo "not running"
    return 3
  fi
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) status ;;
  logs) tail -n "${2:-50}" "$log" ;;
  *) echo "usage: $0 fetch|up|down|status|logs [N]" >&2; exit 2 ;;
esac
