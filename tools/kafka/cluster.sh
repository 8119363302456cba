# shellcheck shell=bash
# KAFKA_BROKERS=N (2..9, say 3): kafka.sh's commands on a local KRaft cluster of
# N nodes instead of the single broker. Sourced by kafka.sh, which has set
# KAFKA_DIR ($STREAMAPP_DATA_DIR/kafka-cluster), PORT, LIBS and the helpers.
#
# Node i (1..N) runs broker and controller in one JVM, its data, config, log
# and PID under $KAFKA_DIR/node<i>; the N controllers form the quorum (static
# controller.quorum.voters, so Kafka 3.9 and 4.x format storage alike: the same
# cluster id on every node, no --standalone / --initial-controllers).
# Ports: KAFKA_PORTS=p1,p2,... and KAFKA_CONTROLLER_PORTS=c1,c2,...; unset,
# node i listens on KAFKA_PORT+2(i-1) (KAFKA_PORT 9292) and its controller on
# the next port. Heap per node: KAFKA_HEAP (384m).
# Internal topics (__consumer_offsets, transactions) get RF min(3, N) and
# min ISR RF-1; the broker's own min.insync.replicas stays 1, so a topic
# has 2 only when its creator asks (the worker does from RF 3 on).

NODE_HEAP="${KAFKA_HEAP:-384m}"
IFS=, read -r -a NODE_PORTS <<<"${KAFKA_PORTS:-}"
IFS=, read -r -a NODE_CONTROLLER_PORTS <<<"${KAFKA_CONTROLLER_PORTS:-}"
for ((i = 0; i < BROKERS; i++)); do
    [ -n "${NODE_PORTS[i]:-}" ] || NODE_PORTS[i]=$((PORT + 2 * i))
    [ -n "${NODE_CONTROLLER_PORTS[i]:-}" ] || NODE_CONTROLLER_PORTS[i]=$((NODE_PORTS[i] + 1))
done
CLUSTER_RF=$((BROKERS < 3 ? BROKERS : 3))
CLUSTER_MIN_ISR=$((CLUSTER_RF > 1 ? CLUSTER_RF - 1 : 1))
BOOTSTRAP="$(for ((i = 0; i < BROKERS; i++)); do printf '127.0.0.1:%s,' "${NODE_PORTS[i]}"; done)"
BOOTSTRAP="${BOOTSTRAP%,}"

node_dir() { echo "$KAFKA_DIR/node$1"; }

node_arg() {
    local n="${1:-}"
    case "$n" in ''|*[!0-9]*) log "usage: kafka.sh $cmd NODE (1..$BROKERS)"; exit 2 ;; esac
    if [ "$n" -lt 1 ] || [ "$n" -gt "$BROKERS" ]; then log "node $n: KAFKA_BROKERS=$BROKERS"; exit 2; fi
    echo "$n"
}

node_pid() {
    local file; file="$(node_dir "$1")/broker.pid"
    [ -f "$file" ] || return 1
    local pid; pid="$(cat "$file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

node_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/${NODE_PORTS[$1 - 1]}") 2>/dev/null || return 1
    grep -q "Kafka Server started" "$(node_dir "$1")/logs/server.log" 2>/dev/null
}

write_node_config() {
    local n="$1" dir voters="" i
    dir="$(node_dir "$n")"
    for ((i = 0; i < BROKERS; i++)); do voters+="$((i + 1))@127.0.0.1:${NODE_CONTROLLER_PORTS[i]},"; done
    mkdir -p "$dir/logs"
    cat >"$dir/server.properties" <<EOF
# Written by tools/kafka/kafka.sh: node $n of a local $BROKERS-node KRaft cluster (broker + controller).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=${voters%,}
listeners=PLAINTEXT://127.0.0.1:${NODE_PORTS[n - 1]},CONTROLLER://127.0.0.1:${NODE_CONTROLLER_PORTS[n - 1]}
advertised.listeners=PLAINTEXT://127.0.0.1:${NODE_PORTS[n - 1]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/log-data
num.partitions=1
default.replication.factor=$CLUSTER_RF
offsets.topic.replication.factor=$CLUSTER_RF
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$CLUSTER_RF
transaction.state.log.min.isr=$CLUSTER_MIN_ISR
share.coordinator.state.topic.replication.factor=$CLUSTER_RF
share.coordinator.state.topic.min.isr=$CLUSTER_MIN_ISR
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
# A follower that stops fetching leaves the ISR after 10 s (30 s by default): writes with acks=all wait that long.
replica.lag.time.max.ms=10000
log.retention.hours=168
EOF
}

# Write the node's config, format its storage once (the cluster's id), start it; no wait.
launch_node() {
    local n="$1" dir pid
    dir="$(node_dir "$n")"
    if pid="$(node_pid "$n")"; then log "node $n already running (pid $pid)"; return 0; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/${NODE_PORTS[n - 1]}") 2>/dev/null; then
        log "port ${NODE_PORTS[n - 1]} (node $n) is taken by another process; set KAFKA_PORTS or stop it"
        return 1
    fi
    write_node_config "$n"
    if [ ! -f "$dir/log-data/meta.properties" ]; then
        log "formatting KRaft storage of node $n in $dir/log-data"
        (java_tool kafka.tools.StorageTool format --ignore-formatted -t "$(cat "$KAFKA_DIR/cluster.id")" \
            -c "$dir/server.properties") >/dev/null
    fi
    log "starting node $n of Apache Kafka $KAFKA_VERSION on 127.0.0.1:${NODE_PORTS[n - 1]}"
    launch "$dir" "$NODE_HEAP"
}

# Wait until each of the given nodes answers (a node logs "Kafka Server started" only once the quorum has a leader).
wait_nodes() {
    local wait_s="${KAFKA_START_WAIT:-90}" n pending
    for _ in $(seq 1 $((wait_s * 2))); do
        pending=""
        for n in "$@"; do
            node_answers "$n" && continue
            if ! node_pid "$n" >/dev/null; then
                log "node $n exited during start; last lines of its log:"
                tail -n 30 "$(node_dir "$n")/logs/server.log" "$(node_dir "$n")/logs/stdout.log" >&2 || true
                return 1
            fi
            pending+=" $n"
        done
        if [ -z "$pending" ]; then
            for n in "$@"; do log "node $n up (pid $(node_pid "$n")) on 127.0.0.1:${NODE_PORTS[n - 1]}"; done
            return 0
        fi
        sleep 0.5
    done
    log "node(s)$pending did not answer within $wait_s s (KAFKA_START_WAIT); logs: $KAFKA_DIR/node*/logs"
    return 1
}

cluster_up() {
    fetch
    mkdir -p "$KAFKA_DIR"
    [ -s "$KAFKA_DIR/cluster.id" ] || (java_tool kafka.tools.StorageTool random-uuid >"$KAFKA_DIR/cluster.id")
    local n nodes=()
    for ((n = 1; n <= BROKERS; n++)); do launch_node "$n" || return 1; nodes+=("$n"); done
    wait_nodes "${nodes[@]}" || return 1
    log "cluster up: $BOOTSTRAP (data: $KAFKA_DIR)"
}

# SIGTERM (controlled shutdown), SIGKILL after 30 s.
stop_node() {
    local n="$1" pid file
    file="$(node_dir "$n")/broker.pid"
    if ! pid="$(node_pid "$n")"; then rm -f "$file"; return 0; fi
    log "stopping node $n (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
        sleep 0.5
    done
    log "node $n did not stop in 30 s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}

# SIGKILL (a crash: no controlled shutdown); returns once the process is gone.
kill_node() {
    local n="$1" pid
    if ! pid="$(node_pid "$n")"; then log "node $n is not running"; return 0; fi
    log "killing node $n (pid $pid) with SIGKILL"
    kill -KILL "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$(node_dir "$n")/broker.pid"
}

# All nodes at once: a node stopped after the others finds no controller quorum
# for its controlled shutdown and would wait until it is killed.
cluster_down() {
    local n pids=() pid
    for ((n = 1; n <= BROKERS; n++)); do
        if pid="$(node_pid "$n")"; then log "stopping node $n (pid $pid)"; kill -TERM "$pid"; pids+=("$pid"); fi
    done
    for _ in $(seq 1 60); do
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; pid=""; done
        [ -z "${pid:-}" ] && break
        sleep 0.5
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then log "pid $pid did not stop in 30 s; killing it"; kill -KILL "$pid"; fi
    done
    for ((n = 1; n <= BROKERS; n++)); do rm -f "$(node_dir "$n")/broker.pid"; done
    log "cluster stopped; data stays in $KAFKA_DIR"
}

# Exit 0 when every node answers; prints each node's state.
cluster_status() {
    local n ok=0 pid
    for ((n = 1; n <= BROKERS; n++)); do
        if node_answers "$n"; then
            echo "node $n up (pid $(node_pid "$n")) 127.0.0.1:${NODE_PORTS[n - 1]}"
        elif pid="$(node_pid "$n")"; then
            echo "node $n starting (pid $pid) 127.0.0.1:${NODE_PORTS[n - 1]}"; ok=1
        else
            echo "node $n down 127.0.0.1:${NODE_PORTS[n - 1]}"; ok=1
        fi
    done
    return $ok
}

cluster_topics() {
    local t
    for t in "${SEED_TOPICS[@]}"; do
        (java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
            --topic "$t" --partitions 1 --replication-factor "$CLUSTER_RF" \
            --config "min.insync.replicas=$CLUSTER_MIN_ISR")
    done
}
