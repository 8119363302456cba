# streamapp: `make run` brings the system up, `make test` runs the whole suite.
PYTHON ?= python3.11
# Another interpreter gets a venv of its own: make test PYTHON=python3.13 uses .venv-python3.13.
VENV   := $(if $(filter python3.11,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
export VENV
BIN    := $(VENV)/bin
KAFKA  := tools/kafka/kafka.sh
export STREAMAPP_DATA_DIR ?= $(CURDIR)/data

.PHONY: run test test-compat venv browser lint kafka-fetch kafka-up kafka-down topics producer consumer kafka-topics worker clean bench bench-smoke bench-anchor

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

## run: venv, local broker (unless STREAMAPP_BROKER names another), topics, worker on :8080
## (make run WORKERS=N: N worker processes on ports 8080.., each its own group member; streamapp workers -n N)
run: venv
	@if [ -z "$$STREAMAPP_BROKER" ]; then $(KAFKA) up && $(KAFKA) topics; fi
	@if [ -n "$(WORKERS)" ]; then $(BIN)/streamapp workers -n $(WORKERS) -l info; else $(BIN)/streamapp worker -l info; fi

## worker: just the worker (broker and topics already up)
worker: venv
	$(BIN)/streamapp worker -l info

## test: venv, lint, the whole pytest suite against a real broker; stops what it started
test: venv browser
	tools/run-tests.sh

## browser: Debian's Chromium for the page's browser test (tests/e2e/test_ui.py), installed once
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

## test-compat: the integration subset (tests/integration, tests/e2e) against another Apache Kafka release,
## by default 3.9.1 (make test-compat KAFKA_COMPAT_VERSION=4.0.0); its own broker on KAFKA_PORT (9392) with its
## data in data/kafka-<version>; the brokers tests start themselves (secured, cluster, chaos) run that release too.
## Not part of make test (about as long as it).
KAFKA_COMPAT_VERSION ?= 3.9.1
test-compat: venv browser
	KAFKA_VERSION=$(KAFKA_COMPAT_VERSION) KAFKA_PORT=$${KAFKA_PORT:-9392} tools/run-tests.sh tests/integration tests/e2e $(ARGS)

lint: venv
	$(BIN)/ruff check streamapp tests bench chaos
	$(BIN)/mypy
	$(BIN)/python tools/import_cycles.py streamapp

kafka-fetch:
	$(KAFKA) fetch
kafka-up:
	$(KAFKA) up
kafka-down:
	$(KAFKA) down
topics:
	$(KAFKA) topics
producer:
	@test -n "$(TOPIC)" || { echo "usage: make producer TOPIC=social-media-posts" >&2; exit 2; }
	$(KAFKA) producer $(TOPIC)
consumer:
	@test -n "$(TOPIC)" || { echo "usage: make consumer TOPIC=streamapp-dead-letters" >&2; exit 2; }
	$(KAFKA) consumer $(TOPIC) $(ARGS)
kafka-topics:
	$(KAFKA) kafka-topics $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

## bench: the benchmark suite (issue 5) at full sizes, under 20 minutes; JSON in bench/results/
## (starts the local broker if nothing answers; ARGS="--only throughput --profile" and so on;
## refuses a tree with uncommitted changes that can move a figure unless ARGS=--allow-dirty)
bench: venv
	$(BIN)/python -m bench $(ARGS)

## bench-smoke: every benchmark scenario at tiny sizes in a minute or two (no timing asserted)
bench-smoke: venv
	$(BIN)/python -m bench --smoke $(ARGS)

## bench-anchor: the same workloads through Restate 1.7.12 beside streamapp, one table (issue 12; not part of make test).
## Installs Restate's server + CLI (npm) and restate-sdk + hypercorn (own venv) under data/anchor/ once;
## JSON in bench/results/<date>-anchor.json (ARGS="--smoke", "--only throughput idle", "--keep", "--allow-dirty")
bench-anchor: venv
	$(BIN)/python -m bench.anchor $(ARGS)

## chaos: the fault-injection run (issue 6): its own broker, 2-3 workers, seeded faults, invariants checked
## (make chaos DURATION=300 SEED=7 [ARGS="--events 2000 --users 50 --keep"]); ARGS=--save keeps the report,
## with its provenance, in chaos/results/<date>-seed<N>.json (refused from a dirty tree unless --allow-dirty)
DURATION ?= 300
SEED ?= $(shell date +%s)
.PHONY: chaos
chaos: venv
	$(BIN)/python -m chaos --duration $(DURATION) --seed $(SEED) $(ARGS)
