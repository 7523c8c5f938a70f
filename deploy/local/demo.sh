#!/usr/bin/env bash
# `make demo`: the full path on the local broker and Flink cluster. A seeded history of the three topics →
# `journeys backfill` into DuckDB → `journeys stream` on Flink on the same topics while new customers' events arrive
# live → a summary of the main tables, the BI views and where to look. Needs `make setup`, the broker and the Flink
# cluster up (make does all three).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=.venv/bin
demo=.local/demo
warehouse=.local/warehouse/journeys.duckdb
published=.local/warehouse/journeys.published.duckdb
prefix="demo$(date +%s)_"
# Sized for a laptop-class machine with two cores: a newly started stream reads the history to build its state.
history_customers=${JOURNEYS_DEMO_CUSTOMERS:-300}
# The simulated calendar ends weeks before today: freshness is judged against a year, not the default day.
quality=(--max-event-age-hours 8760 --data-docs-dir .local/data_docs)
live_rate=${JOURNEYS_DEMO_RATE:-10}  # live events per second
mkdir -p "$demo"
# Customer, cookie and social ids are pseudonymised with a keyed HMAC before they land: the demo's own random key,
# made once (a deployment brings its own: JOURNEYS_PSEUDONYM_KEY_FILE or JOURNEYS_PSEUDONYM_KEY).
if [ -z "${JOURNEYS_PSEUDONYM_KEY_FILE:-}${JOURNEYS_PSEUDONYM_KEY:-}" ]; then
  export JOURNEYS_PSEUDONYM_KEY_FILE="$PWD/.local/demo-pseudonym.key"
  [ -s "$JOURNEYS_PSEUDONYM_KEY_FILE" ] || (umask 077 &&
    "$bin/python" -c "import secrets; print(secrets.token_hex(32))" > "$JOURNEYS_PSEUDONYM_KEY_FILE")
fi
sql() { "$bin/journeys" sql --warehouse "$published" "$1"; }
offsets() { sql "SELECT coalesce(sum(next_offset), 0) FROM source_offsets" 2>/dev/null | tail -n 1 | tr -d ' '; }
# The stream's own progress: its writer replaces this file at every commit (records read, published or not, why).
status=.local/warehouse/journeys.status.json
stream_status() { "$bin/python" -c "import json, sys; s = json.load(open(sys.argv[1])); print(s['records'], s['published'],
  s['committed_at'], '; '.join(s['blocked']) or '-')" "$status" 2>/dev/null || echo "0 False - -"; }
records() { "$bin/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['records'])" "$1"; }

echo "1. A history: $history_customers customers over 60 days, 5% out of order, 1% malformed, into topics ${prefix}*"
"$bin/journeys" generate --customers "$history_customers" --days 60 --seed 7 --format mixed --topic-prefix "$prefix" \
  --out-of-order 0.05 --malformed 0.01 --manifest "$demo/manifest.json"
echo; echo "A few orders as they came back from Kafka, decoded:"
"$bin/journeys" peek orders --limit 3 --topic-prefix "$prefix"

echo; echo "2. Backfill (Beam's in-process batch engine): Kafka -> decode -> journey tables -> $warehouse"
rm -f "$warehouse" "$warehouse.wal" "$published"
"$bin/journeys" backfill --topic-prefix "$prefix" --warehouse "$warehouse" "${quality[@]}" \
  2>"$demo/backfill.log" || true
grep -E "journeys\.(progress|backfill)" "$demo/backfill.log" | tail -n 2 || true

echo; echo "3. Streaming: journeys stream on Flink on the same topics (log: $demo/stream.log; Flink's web UI:"
echo "   http://localhost:${JOURNEYS_FLINK_PORT:-18081}); meanwhile 100 new customers' next two weeks arrive live at"
echo "   $live_rate events/s"
# --flush-after-idle-s: once the live events stop, the last orders are attributed after 20 quiet seconds
setsid "$bin/journeys" stream --topic-prefix "$prefix" --warehouse "$warehouse" "${quality[@]}" \
  --commit-every-s 5 --update-every-s 20 --flush-after-idle-s 20 --log-every-s 10 >"$demo/stream.log" 2>&1 &
stream=$!
# SIGTERM: the job stops with a savepoint (a restart would resume from it)
stop_stream() { kill -TERM -- "-$stream" 2>/dev/null || true; for _ in $(seq 1 120); do
  kill -0 "$stream" 2>/dev/null || return 0; sleep 1; done; kill -KILL -- "-$stream" 2>/dev/null || true; }
trap stop_stream EXIT
"$bin/journeys" generate --customers 100 --first-customer "$history_customers" --days 14 --start 2026-10-31 --seed 7 \
  --format mixed --topic-prefix "$prefix" --no-create-topics --out-of-order 0.05 --malformed 0.01 \
  --rate "$live_rate" --manifest "$demo/live_manifest.json"
total=$(( $(records "$demo/manifest.json") + $(records "$demo/live_manifest.json") ))
echo "   waiting until the stream has committed all $total records (its status: $status)..."
read_all=""
for _ in $(seq 1 60); do
  read -r s_records s_published s_committed_at s_blocked <<<"$(stream_status)"
  if ! kill -0 "$stream" 2>/dev/null; then echo "   the stream stopped: see $demo/stream.log"; break; fi
  if [ "$s_records" = "$total" ] && [ -z "$read_all" ]; then
    read_all=$(date +%s); echo "   all $total records committed; the last orders settle after 20 quiet seconds"
  fi
  # Done: every record read, and a published commit after the flush and one more table update.
  if [ -n "$read_all" ] && [ "$s_published" = "True" ] && \
     [ "$(date -d "$s_committed_at" +%s 2>/dev/null || echo 0)" -ge $((read_all + 45)) ]; then break; fi
  sleep 3
done
read -r s_records s_published s_committed_at s_blocked <<<"$(stream_status)"
if [ "$s_records" != "$total" ]; then
  echo "   FAILED: the stream committed $s_records of $total records within 3 minutes (log: $demo/stream.log)"
elif [ "$s_published" != "True" ]; then
  echo "   FAILED: the last commit was not published; block-severity checks failed: $s_blocked"
else
  echo "   caught up: the last commit ($s_committed_at) was validated and published"
fi
stop_stream; trap - EXIT
grep -E "journeys\.stream" "$demo/stream.log" | tail -n 2 | cut -c1-400

echo; echo "Records: $total in, $(offsets) committed; rows per table:"
sql "SELECT 'touchpoints' AS t, count(*) AS rows FROM touchpoints UNION ALL SELECT 'order_attribution', count(*)
     FROM order_attribution UNION ALL SELECT 'customers', count(*) FROM customers UNION ALL SELECT 'retention_cohorts',
     count(*) FROM retention_cohorts UNION ALL SELECT 'social_impact', count(*) FROM social_impact UNION ALL
     SELECT 'dead_letters', count(*) FROM dead_letters"
echo; echo "Which channels earn orders? (view channel_roi, linear model; load channel_spend for ROI)"
sql "SELECT channel, conversions, revenue, revenue_share, currency FROM channel_roi WHERE model = 'linear'
     ORDER BY revenue DESC LIMIT 8"
echo; echo "Do socially engaged customers spend more? (all platforms, all months, in the reporting currency)"
sql "SELECT \"group\", sum(orders) AS orders, sum(revenue) AS revenue, round(sum(revenue) / sum(orders), 2)
     AS order_value, any_value(currency) AS currency FROM social_impact WHERE platform = 'all' GROUP BY ALL ORDER BY 1"
echo; echo "Do they stay? Monthly cohorts by social engagement (view cohort_retention_matrix):"
sql "SELECT cohort_start, segment, cohort_size, period_0, round(period_1, 2) AS period_1, round(period_2, 2) AS period_2
     FROM cohort_retention_matrix WHERE cohort_grain = 'month' AND segment_type = 'social_engagement' ORDER BY 1, 2"
echo; echo "Dead letters by reason:"
sql "SELECT topic, stage, reason, count(*) AS records FROM dead_letters GROUP BY ALL ORDER BY 4 DESC"
echo; echo "4. Data quality: journeys validate on the landed tables (exit 0 pass, 1 warn, 2 block)"
"$bin/journeys" validate --warehouse "$warehouse" "${quality[@]}" 2>"$demo/validate.log" && status=0 || status=$?
echo "   exit code $status; rows the gate quarantined, by table and rule:"
sql "SELECT table_name, rule, count(*) AS rows FROM quarantine GROUP BY ALL ORDER BY rows DESC"
echo; echo "5. The report: plots of all of the above, and the tables' documentation"
"$bin/journeys" report --warehouse "$published" --out .local/report 2>/dev/null
echo
echo "Report:    $(pwd)/.local/report/index.html (open it in a browser; no network needed)"
echo "Warehouse: $published (a published copy; query it with: $bin/journeys sql \"SELECT ...\")"
echo "Views:     channel_roi, cohort_retention_matrix; tables documented in schemas/TABLES.md"
echo "Broker:    $("$bin/journeys" kafka status)   topics: ${prefix}*"
echo "Flink:     web UI http://localhost:${JOURNEYS_FLINK_PORT:-18081} (jobs, checkpoints); savepoints in .local/flink/savepoints"
echo "Manifests: $demo/manifest.json, $demo/live_manifest.json (counts, malformed records, the planted truth)"
echo "Quality:   .local/data_docs/index.html (Great Expectations Data Docs); tables dq_results, quarantine"
echo "Logs:      $demo/backfill.log, $demo/stream.log, $demo/validate.log"
echo "Stop:      make kafka-down flink-down"
