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
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
CACHE_DIR="${STREAMAPP_CACHE_DIR:-$HOME/.cache/streamapp}"
LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
DATA_DIR="${STREAMAPP_DATA_DIR:-$ROOT/data}"
case "$DATA_DIR" in /*) ;; *) DATA_DIR="$ROOT/$DATA_DIR" ;; esac
KAFKA_DIR="$DATA_DIR/kafka"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
BOOTSTRAP="127.0.0.1:$PORT"
PID_FILE="$KAFKA_DIR/broker.pid"
LOG_FILE="$KAFKA_DIR/logs/server.log"
SEED_TOPICS=(social-media-posts package-location-updates)

log() { echo "kafka: $*" >&2; }

fetch() {
    if [ -f "$LIBS/.complete" ]; then return 0; fi
    log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
    rm -rf "$LIBS" && mkdir -p "$LIBS"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
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

write_config() {
    mkdir -p "$KAFKA_DIR/logs"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by tools/kafka/kafka.sh: single-node KRaft broker for a dev box.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
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
    write_config
    if [ ! -f "$KAFKA_DIR/log-data/meta.properties" ]; then
        log "formatting KRaft storage in $KAFKA_DIR/log-data"
        (java_tool kafka.tools.StorageTool format --ignore-formatted \
            -t "$(java_tool kafka.tools.StorageTool random-uuid)" \
            -c "$KAFKA_DIR/server.properties") >/dev/null
    fi
    log "starting Apache Kafka $KAFKA_VERSION on $BOOTSTRAP (data: $KAFKA_DIR)"
    : >"$LOG_FILE"
    nohup java -Xms128m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -Dkafka.logs.dir="$KAFKA_DIR/logs" -Dkafka.root.appender=FILE \
        -Dkafka.root.level=info \
        -cp "$LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
        >"$KAFKA_DIR/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
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
        (java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
            --create --if-not-exists --topic "$t" --partitions 1 --replication-factor 1)
    done
}

cmd="${1:-}"; shift || true
case "$cmd" in
    fetch) fetch ;;
    up) up ;;
    down) down ;;
    status) answers ;;
    topics) topics ;;
    producer)
        topic="${1:?usage: kafka.sh producer TOPIC}"; shift
        java_tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BOOTSTRAP" \
            --topic "$topic" --reader-property parse.key=true --reader-property key.separator=: "$@" ;;
    consumer)
        topic="${1:?usage: kafka.sh consumer TOPIC}"; shift
        java_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" \
            --topic "$topic" --from-beginning --property print.key=true \
            --property key.separator=: "$@" ;;
    kafka-topics) java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@" ;;
    run) java_tool "$@" ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
