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

# Broker up, a seeded history of events of all three topics produced to fresh topics, backfilled into the
# DuckDB warehouse (every journey table and the dead letters), and a first look at the answers.
DEMO_DIR := .local/demo
WAREHOUSE := .local/warehouse/journeys.duckdb
PUBLISHED := .local/warehouse/journeys.published.duckdb
demo: kafka-up
	mkdir -p $(DEMO_DIR)
	$(eval PREFIX := demo$(shell date +%s)_)
	$(BIN)/journeys generate --customers 1000 --days 60 --seed 7 --format mixed --topic-prefix $(PREFIX) \
	  --out-of-order 0.05 --malformed 0.01 --manifest $(DEMO_DIR)/manifest.json
	@echo; echo "A few orders as they came back from Kafka, decoded:"
	@$(BIN)/journeys peek orders --limit 3 --topic-prefix $(PREFIX)
	@echo; echo "Backfill on Prism: Kafka -> decode -> journey tables -> $(WAREHOUSE) (a few minutes)"
	@$(BIN)/journeys backfill --runner PrismRunner --topic-prefix $(PREFIX) --warehouse $(WAREHOUSE) 2>/dev/null
	@echo; echo "Which channels earn orders (linear model, conversions and revenue by channel):"
	@$(BIN)/journeys sql "SELECT channel, round(sum(conversions), 1) AS conversions, sum(revenue) AS revenue, currency \
	  FROM channel_attribution_daily WHERE model = 'linear' GROUP BY ALL ORDER BY revenue DESC LIMIT 8"
	@echo; echo "Do socially engaged customers spend more? (all platforms, all months, in the reporting currency)"
	@$(BIN)/journeys sql "SELECT \"group\", sum(orders) AS orders, sum(revenue) AS revenue, \
	  round(sum(revenue) / sum(orders), 2) AS order_value, any_value(currency) AS currency \
	  FROM social_impact WHERE platform = 'all' GROUP BY ALL ORDER BY 1"
	@echo; echo "Dead letters by reason:"
	@$(BIN)/journeys sql "SELECT topic, stage, reason, count(*) AS records FROM dead_letters GROUP BY ALL ORDER BY 4 DESC"
	@echo
	@echo "Warehouse: $(PUBLISHED) (a published copy; query it with: $(BIN)/journeys sql \"SELECT ...\")"
	@echo "Broker:    $$($(BIN)/journeys kafka status)   topics: $(PREFIX)*"
	@echo "Manifest:  $(DEMO_DIR)/manifest.json (counts, malformed records by kind, the planted truth)"
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
