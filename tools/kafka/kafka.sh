#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node) for development, tests and CI.
#
# The broker and its command-line tools are resolved from Maven Central by
# tools/kafka/pom.xml and copied once into a cache dir; nothing is built.
#
#   kafka.sh fetch                 download the jars (once)
#   kafka.sh up                    format storage (once), start, wait until it answers
#   kafka.sh down                  stop the broker started by `up` (by PID); data stays
#   kafka.sh status                exit 0 when the broker answers
#   kafka.sh topics                create the seed's topics (1 partition each)
#   kafka.sh producer TOPIC [...]  kafka-console-producer, key:value lines
#   kafka.sh consumer TOPIC [...]  kafka-console-consumer from the beginning
#   kafka.sh kafka-topics [...]    kafka-topics with --bootstrap-server set
#   kafka.sh run CLASS [...]       any Kafka tool class on the classpath
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
# STREAMAPP_DATA_DIR (./data; the broker keeps its data in $STREAMAPP_DATA_DIR/kafka),
# STREAMAPP_CACHE_DIR (~/.cache/streamapp), KAFKA_HEAP (512m).
#
# KAFKA_VERSION (default: <kafka.version> of tools/kafka/pom.xml, 4.4.0): another
# Apache Kafka release, say 3.9.1; its jars go to $STREAMAPP_CACHE_DIR/kafka-<version>
# and its data to kafka-<version> (kafka-secure-<version>, kafka-cluster-<version>).
#
# KAFKA_BROKERS=3 (2..9, plaintext only): a local KRaft cluster instead, each
# node broker and controller, data, config, log and PID in
# $STREAMAPP_DATA_DIR/kafka-cluster/node<i> (see tools/kafka/cluster.sh). Ports:
# KAFKA_PORTS=p1,p2,p3 and KAFKA_CONTROLLER_PORTS=c1,c2,c3, else 9292, 9294,
# 9296 (KAFKA_PORT+2(i-1)) and the next port for each controller; KAFKA_HEAP
# (384m) per node. up, down, status (every node answers), topics (RF 3,
# min.insync.replicas 2), producer, consumer, kafka-topics work on it, and:
#   kafka.sh kill-node N           SIGKILL node N (a crash); its data stays
#   kafka.sh stop-node N           SIGTERM node N (controlled shutdown)
#   kafka.sh start-node N          start node N again, wait until it answers
#
# KAFKA_SECURITY=sasl_ssl: every command above works on a second, secured
# broker instead, with its data in $STREAMAPP_DATA_DIR/kafka-secure (so it can
# run beside the plain one on other ports; KAFKA_PORT then defaults to 9192):
#   - KAFKA_PORT: SASL_SSL listener, SCRAM-SHA-512 (clients and inter-broker);
#   - KAFKA_MTLS_PORT (KAFKA_PORT+2): SSL listener that requires a client certificate;
#   - the controller listener stays PLAINTEXT on loopback.
# `up` makes, once, a CA and certificates under kafka-secure/tls (PEM; the
# broker's carries SAN 127.0.0.1 and localhost, a client one for mTLS) and adds
# the SCRAM-SHA-512 users at storage format time: KAFKA_SASL_USERNAME
# (alice) with KAFKA_SASL_PASSWORD (alice-secret), and the broker's own.
# The tools (producer, consumer, kafka-topics) get a client config for the
# SASL_SSL listener (kafka-secure/client.properties).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DEFAULT_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
KAFKA_VERSION="${KAFKA_VERSION:-$DEFAULT_VERSION}"
CACHE_DIR="${STREAMAPP_CACHE_DIR:-$HOME/.cache/streamapp}"
LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
DATA_DIR="${STREAMAPP_DATA_DIR:-$ROOT/data}"
case "$DATA_DIR" in /*) ;; *) DATA_DIR="$ROOT/$DATA_DIR" ;; esac
# Another Kafka version keeps its data apart: storage one version formatted is not for another.
VERSION_SUFFIX=""
[ "$KAFKA_VERSION" = "$DEFAULT_VERSION" ] || VERSION_SUFFIX="-$KAFKA_VERSION"
SECURITY="${KAFKA_SECURITY:-plaintext}"
BROKERS="${KAFKA_BROKERS:-1}"
case "$SECURITY" in
    plaintext) KAFKA_DIR="$DATA_DIR/kafka$VERSION_SUFFIX"; PORT="${KAFKA_PORT:-9092}" ;;
    sasl_ssl) KAFKA_DIR="$DATA_DIR/kafka-secure$VERSION_SUFFIX"; PORT="${KAFKA_PORT:-9192}" ;;
    *) echo "kafka: KAFKA_SECURITY=$SECURITY must be plaintext or sasl_ssl" >&2; exit 2 ;;
esac
case "$BROKERS" in
    1) ;;
    [2-9])
        [ "$SECURITY" = plaintext ] || { echo "kafka: KAFKA_BROKERS=$BROKERS is plaintext only" >&2; exit 2; }
        KAFKA_DIR="$DATA_DIR/kafka-cluster$VERSION_SUFFIX"; PORT="${KAFKA_PORT:-9292}" ;;
    *) echo "kafka: KAFKA_BROKERS=$BROKERS must be 1 to 9" >&2; exit 2 ;;
esac
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
MTLS_PORT="${KAFKA_MTLS_PORT:-$((PORT + 2))}"
TLS_DIR="$KAFKA_DIR/tls"
CLIENT_CONFIG="$KAFKA_DIR/client.properties"
SASL_USER="${KAFKA_SASL_USERNAME:-alice}"
SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-alice-secret}"
BROKER_USER=broker
BROKER_PASSWORD=""
BOOTSTRAP="127.0.0.1:$PORT"
PID_FILE="$KAFKA_DIR/broker.pid"
LOG_FILE="$KAFKA_DIR/logs/server.log"
SEED_TOPICS=(social-media-posts package-location-updates)
# The console tools' class and option names changed in Kafka 4.0.
case "$KAFKA_VERSION" in
    3.*) PRODUCER=kafka.tools.ConsoleProducer; READER_PROPERTY=--property
         PRODUCER_CONFIG=--producer.config; CONSUMER_CONFIG=--consumer.config ;;
    *) PRODUCER=org.apache.kafka.tools.ConsoleProducer; READER_PROPERTY=--reader-property
       PRODUCER_CONFIG=--command-config; CONSUMER_CONFIG=--command-config ;;
esac

log() { echo "kafka: $*" >&2; }

fetch() {
    if [ -f "$LIBS/.complete" ]; then return 0; fi
    log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
    rm -rf "$LIBS" && mkdir -p "$LIBS"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" \
        -DincludeScope=runtime -DoutputDirectory="$LIBS"
    touch "$LIBS/.complete"
}

java_tool() {
    # Run a Kafka tool class; tools log warnings to stderr only.
    fetch
    local cls="$1"; shift
    exec java -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -Dkafka.root.appender=STDERR \
        -cp "$LIBS/*" "$cls" "$@"
}

answers() {
    # The broker answers when its listener accepts a connection and it has
    # logged that it started (the listener opens a little before that).
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || return 1
    grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null
}

running_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid; pid="$(cat "$PID_FILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# A CA, the broker's certificate (SAN 127.0.0.1, localhost) and a client
# certificate for mTLS, as PEM files; made once, kept with the broker's data.
make_certs() {
    [ -f "$TLS_DIR/.complete" ] && return 0
    log "making a CA and certificates in $TLS_DIR"
    rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=streamapp dev CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >broker.ext
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        for name in broker client; do
            openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
            openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
                -extfile "$name.ext" -out "$name.pem" 2>/dev/null
        done
        # The broker's keystore: PKCS12 with its key and chain.
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
            -passout pass:streamapp -out broker.p12
        rm -f ./*.csr ./*.ext ca.srl
    )
    touch "$TLS_DIR/.complete"
}

write_client_config() {
    (umask 077; cat >"$CLIENT_CONFIG" <<EOF
# Written by tools/kafka/kafka.sh: Apache Kafka's tools on the SASL_SSL listener.
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$SASL_USER" password="$SASL_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
    )
}

write_config() {
    mkdir -p "$KAFKA_DIR/logs"
    local listeners advertised inter map security=""
    if [ "$SECURITY" = sasl_ssl ]; then
        listeners="SASL_SSL://127.0.0.1:$PORT,MTLS://127.0.0.1:$MTLS_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
        advertised="SASL_SSL://127.0.0.1:$PORT,MTLS://127.0.0.1:$MTLS_PORT"
        inter=SASL_SSL
        map="CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL"
        security="
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$BROKER_USER\" password=\"$BROKER_PASSWORD\";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=streamapp
ssl.key.password=streamapp
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.mtls.ssl.client.auth=required"
    else
        listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
        advertised="PLAINTEXT://127.0.0.1:$PORT"
        inter=PLAINTEXT
        map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    fi
    (umask 077; cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by tools/kafka/kafka.sh: single-node KRaft broker for a dev box.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=$inter
listener.security.protocol.map=$map$security
log.dirs=$KAFKA_DIR/log-data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
EOF
    )
}

up() {
    if pid="$(running_pid)" && answers; then
        log "broker already running (pid $pid) on $BOOTSTRAP"
        return 0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        log "port $PORT is taken by another process; set KAFKA_PORT or stop it"
        return 1
    fi
    fetch
    local scram=()
    if [ "$SECURITY" = sasl_ssl ]; then
        make_certs
        # The broker's own SCRAM password: made once, kept (mode 600) beside its data.
        [ -f "$KAFKA_DIR/broker.secret" ] || (umask 077; openssl rand -hex 16 >"$KAFKA_DIR/broker.secret")
        BROKER_PASSWORD="$(cat "$KAFKA_DIR/broker.secret")"
        write_client_config
        scram=(--add-scram "SCRAM-SHA-512=[name=$BROKER_USER,password=$BROKER_PASSWORD]"
               --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]")
    fi
    write_config
    if [ ! -f "$KAFKA_DIR/log-data/meta.properties" ]; then
        log "formatting KRaft storage in $KAFKA_DIR/log-data"
        (java_tool kafka.tools.StorageTool format --ignore-formatted \
            -t "$(java_tool kafka.tools.StorageTool random-uuid)" \
            -c "$KAFKA_DIR/server.properties" "${scram[@]}") >/dev/null
    fi
    log "starting Apache Kafka $KAFKA_VERSION on $BOOTSTRAP (data: $KAFKA_DIR)"
    launch "$KAFKA_DIR" "${KAFKA_HEAP:-512m}"
    local wait_s="${KAFKA_START_WAIT:-60}"  # a broker killed mid-write recovers its logs first: slow on a busy box
    for _ in $(seq 1 $((wait_s * 2))); do
        if answers; then
            log "broker up (pid $(cat "$PID_FILE")); log: $LOG_FILE"
            return 0
        fi
        if ! running_pid >/dev/null; then
            log "broker exited during start; last lines of $LOG_FILE:"
            tail -n 30 "$LOG_FILE" "$KAFKA_DIR/logs/stdout.log" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    log "broker did not answer within $wait_s s (KAFKA_START_WAIT); log: $LOG_FILE"
    return 1
}

# Start the broker configured in DIR/server.properties in the background; its PID goes to DIR/broker.pid.
launch() {
    local dir="$1" heap="$2"
    mkdir -p "$dir/logs"
    : >"$dir/logs/server.log"
    nohup java -Xms128m -Xmx"$heap" -XX:+UseG1GC \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -Dkafka.logs.dir="$dir/logs" -Dkafka.root.appender=FILE \
        -Dkafka.root.level=info \
        -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
        >"$dir/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/broker.pid"
}

down() {
    local pid
    if ! pid="$(running_pid)"; then
        log "no broker running from $KAFKA_DIR"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping broker (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; log "stopped"; return 0; }
        sleep 0.5
    done
    log "broker did not stop in 30 s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
}

topics() {
    local t
    for t in "${SEED_TOPICS[@]}"; do
        # shellcheck disable=SC2046
        (java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
            $(client_args --command-config) --create --if-not-exists --topic "$t" --partitions 1 --replication-factor 1)
    done
}

# The tools' client settings: none for the plain broker, the SASL_SSL client config for the secure one.
client_args() {
    if [ "$SECURITY" = sasl_ssl ]; then printf '%s\n' "$1" "$CLIENT_CONFIG"; fi
}

cmd="${1:-}"; shift || true
if [ "$BROKERS" -gt 1 ]; then
    # shellcheck source=tools/kafka/cluster.sh
    source "$HERE/cluster.sh"
    case "$cmd" in
        up) cluster_up; exit ;;
        down) cluster_down; exit ;;
        status) cluster_status; exit ;;
        topics) cluster_topics; exit ;;
        kill-node) n="$(node_arg "${1:-}")" || exit 2; kill_node "$n"; exit ;;
        stop-node) n="$(node_arg "${1:-}")" || exit 2; stop_node "$n"; exit ;;
        start-node) n="$(node_arg "${1:-}")" || exit 2; fetch; launch_node "$n" && wait_nodes "$n"; exit ;;
    esac
fi
case "$cmd" in
    fetch) fetch ;;
    up) up ;;
    down) down ;;
    status) answers ;;
    topics) topics ;;
    producer)
        topic="${1:?usage: kafka.sh producer TOPIC}"; shift
        # shellcheck disable=SC2046
        java_tool "$PRODUCER" --bootstrap-server "$BOOTSTRAP" $(client_args "$PRODUCER_CONFIG") \
            --topic "$topic" "$READER_PROPERTY" parse.key=true "$READER_PROPERTY" key.separator=: "$@" ;;
    consumer)
        topic="${1:?usage: kafka.sh consumer TOPIC}"; shift
        # shellcheck disable=SC2046
        java_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" \
            $(client_args "$CONSUMER_CONFIG") --topic "$topic" --from-beginning --property print.key=true \
            --property key.separator=: "$@" ;;
    # shellcheck disable=SC2046
    kafka-topics) java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        $(client_args --command-config) "$@" ;;
    run) java_tool "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
