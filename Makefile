# The two commands of the README: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := false

.PHONY: setup demo test test-unit kafka-up kafka-down clean

setup: $(STAMP) .local/kafka/libs/.pom.sha256 .local/bin/prism

# Prism (Beam's local portable runner), built with `go install` at the venv's Beam version.
.local/bin/prism: $(STAMP)
	deploy/local/prism.sh

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

.local/kafka/libs/.pom.sha256: deploy/local/pom.xml
	deploy/local/kafka.sh fetch

kafka-up: setup
	$(BIN)/journeys kafka up

kafka-down:
	deploy/local/kafka.sh down

# Broker up, a seeded history of events of all three topics produced to it, a look at what landed.
# (Running it again appends the same events again: downstream deduplicates by event_id.)
DEMO_DIR := .local/demo
demo: kafka-up
	mkdir -p $(DEMO_DIR)
	$(BIN)/journeys generate --customers 3000 --days 60 --seed 7 --format mixed \
	  --out-of-order 0.05 --late 0.02 --malformed 0.01 --manifest $(DEMO_DIR)/manifest.json
	@echo; echo "A few orders as they came back from Kafka, decoded:"
	@$(BIN)/journeys peek orders --limit 3
	@echo; echo "The Beam source on Prism, backfilling all three topics: events per topic per week, dead letters:"
	@$(BIN)/journeys count --runner PrismRunner --window-seconds 604800 2>/dev/null
	@echo
	@echo "Broker:    $$($(BIN)/journeys kafka status)"
	@echo "Manifest:  $(DEMO_DIR)/manifest.json (counts, malformed records by kind, the planted truth)"
	@echo "Look:      $(BIN)/journeys peek web_sessions --limit 5   |   $(BIN)/journeys kafka logs"
	@echo "Stop:      make kafka-down"

# Unit and integration tests against the real local broker. A broker this target started is stopped
# afterwards, also on failure; one that was already running (make demo) is left running.
test: setup
	@was_running=0; deploy/local/kafka.sh status >/dev/null && was_running=1; \
	  $(BIN)/journeys kafka up || exit 1; \
	  status=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || status=$$?; \
	  [ $$was_running = 1 ] || deploy/local/kafka.sh down; exit $$status

test-unit: setup
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

clean: kafka-down
	rm -rf .local $(VENV) *.egg-info
