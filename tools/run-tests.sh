#!/usr/bin/env bash
# `make test`: lint, then the whole pytest suite against a real Apache Kafka
# broker. Uses STREAMAPP_TEST_BROKER when set; otherwise the local broker,
# started here if it is not running and stopped again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
KAFKA=tools/kafka/kafka.sh

started=""
cleanup() { if [ -n "$started" ]; then $KAFKA down || true; fi; }
trap cleanup EXIT

if [ -z "${STREAMAPP_TEST_BROKER:-}" ]; then
    if ! $KAFKA status; then
        $KAFKA up
        started=1
    fi
    export STREAMAPP_TEST_BROKER="kafka://127.0.0.1:${KAFKA_PORT:-9092}"
fi

echo "== ruff"
$BIN/ruff check streamapp tests bench chaos
echo "== mypy"
$BIN/mypy
echo "== pytest (broker $STREAMAPP_TEST_BROKER)"
$BIN/pytest "$@"
echo "== bench smoke (every benchmark scenario at tiny sizes; nothing timed is asserted)"
$BIN/python -m bench --smoke
