#!/usr/bin/env bash
# `make test`: lint, then the whole pytest suite against a real Apache Kafka
# broker. Uses STREAMAPP_TEST_BROKER when set; otherwise the local broker,
# started here if it is not running and stopped again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin  # make test PYTHON=python3.13: that interpreter's venv
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

# Each stage says how long it took, and the whole run is timed at the end
# (the target is under 15 minutes on a 2-core machine).
stage_start=$SECONDS
run_start=$SECONDS
took() { echo "-- $1 took $((SECONDS - stage_start)) s"; stage_start=$SECONDS; }

echo "== ruff"
$BIN/ruff check streamapp tests bench chaos
took ruff
echo "== mypy"
$BIN/mypy
took mypy
echo "== import cycles"
$BIN/python tools/import_cycles.py streamapp
took "import cycles"
# Most of the suite waits on the broker and on workers, not on a core: two test
# processes (pytest-xdist) share it out.
# STREAMAPP_TEST_PROCESSES=0 runs it in this process. The bench smoke (every
# benchmark scenario at tiny sizes) is one of the tests (test_bench_smoke.py).
procs=${STREAMAPP_TEST_PROCESSES:-2}
echo "== pytest (broker $STREAMAPP_TEST_BROKER, $procs test processes)"
if [ "$procs" -gt 0 ]; then
    $BIN/pytest -n "$procs" --dist worksteal "$@"
else
    $BIN/pytest "$@"
fi
took pytest
echo "-- tests took $((SECONDS - run_start)) s in all (load average $(cut -d' ' -f1-3 /proc/loadavg))"
