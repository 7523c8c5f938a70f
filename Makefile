# The two commands of the README: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := false

.PHONY: setup demo test test-unit kafka-up kafka-down chromium clean

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

# Debian's Chromium: only the report's browser test needs it.
chromium:
	deploy/local/chromium.sh

kafka-up: setup
	$(BIN)/journeys kafka up

kafka-down:
	deploy/local/kafka.sh down

# Broker up, a seeded history backfilled into DuckDB, then `journeys stream` while new events arrive live, and a
# summary of the main tables and views (deploy/local/demo.sh).
demo: kafka-up
	deploy/local/demo.sh

# Unit and integration tests against the real local broker. A broker this target started is stopped
# afterwards, also on failure; one that was already running (make demo) is left running.
test: setup chromium
	@was_running=0; deploy/local/kafka.sh status >/dev/null && was_running=1; \
	  $(BIN)/journeys kafka up || exit 1; \
	  status=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || status=$$?; \
	  [ $$was_running = 1 ] || deploy/local/kafka.sh down; exit $$status

test-unit: setup
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

clean: kafka-down
	rm -rf .local $(VENV) *.egg-info
