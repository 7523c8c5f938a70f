# The two commands of the README: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := false

.PHONY: setup demo test test-unit kafka-up kafka-down flink-up flink-down chromium clean

setup: $(STAMP) .local/kafka/libs/.pom.sha256 .local/flink/.jobserver.sha256 .local/bin/prism

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

# Beam's Flink job server (one shaded jar from Maven Central modules) and Flink 1.19 from PyPI's sdist.
.local/flink/.jobserver.sha256: deploy/flink/pom.xml $(STAMP)
	deploy/flink/flink.sh fetch

# Debian's Chromium: only the report's browser test needs it.
chromium:
	deploy/local/chromium.sh

kafka-up: setup
	$(BIN)/journeys kafka up

kafka-down:
	deploy/local/kafka.sh down

flink-up: setup
	$(BIN)/journeys flink up

flink-down:
	deploy/flink/flink.sh down

# Broker and Flink up, a seeded history backfilled into DuckDB, then `journeys stream` on Flink while new events
# arrive live, and a summary of the main tables and views (deploy/local/demo.sh).
demo: kafka-up flink-up
	deploy/local/demo.sh

# Unit and integration tests against the real local broker and Flink cluster. What this target started is stopped
# afterwards, also on failure; what was already running (make demo) is left running.
test: setup chromium
	@kafka_ran=0; deploy/local/kafka.sh status >/dev/null && kafka_ran=1; \
	  flink_ran=0; deploy/flink/flink.sh status >/dev/null && flink_ran=1; \
	  $(BIN)/journeys kafka up && $(BIN)/journeys flink up || exit 1; \
	  status=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || status=$$?; \
	  [ $$flink_ran = 1 ] || deploy/flink/flink.sh down; \
	  [ $$kafka_ran = 1 ] || deploy/local/kafka.sh down; exit $$status

test-unit: setup
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

clean: kafka-down flink-down
	rm -rf .local $(VENV) *.egg-info
