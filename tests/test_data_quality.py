"""Validated landing: suites derived from the contracts, the row gate's quarantine, the table checkpoint's
dq_results, block holding back publishing, and one webhook alert per incident (received by a local HTTP server)."""
import datetime as dt
import email
import http.server
import json
import socketserver
import threading
from decimal import Decimal

import duckdb
import pytest

from schemas.contracts import contract
from transforms.secret import Secret
from transforms.data_quality import ValidatedLanding
from transforms.dq_gate import gate, gate_arrow
from transforms.dq_suites import QualityConfig, checks

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class AlertReceiver:
    """A local HTTP endpoint that keeps every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/journeys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


class MailReceiver:
    """A local SMTP server (plain, no login) that keeps every message it is given, as text."""

    def __init__(self):
        messages = self.messages = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                reply = lambda line: self.wfile.write(line.encode() + b"\r\n")
                reply("220 localhost journeys test SMTP")
                for line in iter(self.rfile.readline, b""):
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        reply("354 end with <CRLF>.<CRLF>")
                        body = b"".join(iter(lambda: self.rfile.readline(), b".\r\n"))
                        messages.append(email.message_from_bytes(body))
                        reply("250 queued")
                    elif verb == b"QUIT":
                        reply("221 bye")
                        return
                    else:  # EHLO, MAIL, RCPT, RSET, NOOP
                        reply("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mail():
    mail = MailReceiver()
    yield mail
    mail.close()


def attribution(order_id, credits=(0.5, 0.5), value="100.00", status="placed", models=("linear", "first_touch")):
    """An order's rows: per model, the given credits over touches; revenue = credit × value."""
    rows = []
    for model in models:
        shares = credits if model == models[0] else (1.0,) + (0.0,) * (len(credits) - 1)
        for index, credit in enumerate(shares):
            rows.append({"order_id": order_id, "model": model, "touch_index": index, "status": status,
                         "customer_id": "C1", "order_time": NOW, "touch_id": f"{order_id}-t{index}",
                         "touch_time": NOW - dt.timedelta(hours=index + 1), "channel": "Email",
                         "credit": credit, "revenue_credit": Decimal(value) * Decimal(str(credit)),
                         "currency": "EUR", "revision": 0, "group_rows": len(credits) * len(models)})
    return rows


def cohort(period, active, size=4, grain="month", rate=None):
    return {"cohort_grain": grain, "cohort_start": NOW.date().replace(day=1), "segment_type": "all",
            "segment": "all", "period_index": period, "cohort_size": size, "active_customers": active,
            "retention_rate": min(active / size, 1.0) if rate is None else rate,
            "retention_rate_on_or_after": min(active / size, 1.0),
            "net_revenue": 10.0 * active, "cumulative_revenue_per_customer": 1.0, "currency": "EUR"}


def touch(touch_id, when=NOW):
    return {"touch_id": touch_id, "customer_key": "C1", "touch_time": when, "kind": "session",
            "channel": "Email", "source": "newsletter", "medium": "email", "campaign": "(not set)",
            "platform": None, "view_through": False}


def _published(warehouse, sql):
    with duckdb.connect(str(warehouse.path.with_suffix(".published.duckdb")), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_suites_derive_from_the_contracts():
    names = {check.name: check for check in checks("order_attribution")}
    c = contract("order_attribution")
    assert {f"not_null:{col.name}" for col in c.columns if not col.nullable} <= set(names)
    assert names["accepted_values:model"].kwargs == (("column", "model"), ("value_set", c.column("model").accepted_values))
    assert names["range:credit"].expectation == "ExpectColumnValuesToBeBetween"
    assert names["unique_key"].kwargs == (("column_list", c.primary_key),)
    assert {"credits_sum_to_one", "every_model_credits_the_order_value", "no_revenue_from_cancelled_orders"} <= set(names)
    fresh = {check.name: check for check in checks("touchpoints", QualityConfig(max_event_age_hours=6))}["fresh_events"]
    assert ("max_value", 6) in fresh.kwargs and fresh.severity == "warn"
    assert {check.name for check in checks("retention_cohorts")} >= {"active_within_cohort", "on_or_after_at_least_on"}


def test_the_row_gate_quarantines_each_broken_rule_with_its_reason():
    good = cohort(0, 2)
    rows = [good, cohort(1, 5), cohort(2, 1, rate=1.7), {**cohort(3, 1), "currency": None},
            cohort(4, 1, grain="fortnight")]
    gated = gate("retention_cohorts", rows, "run-1", NOW)
    assert gated.passed == [good]
    by_rule = {(json.loads(q["row_key"])["period_index"], q["rule"]): q for q in gated.quarantined}
    assert set(by_rule) == {(1, "active_within_cohort"), (2, "range:retention_rate"),
                            (2, "on_or_after_at_least_on"), (3, "not_null:currency"),
                            (4, "accepted_values:cohort_grain")}
    assert "active_customers=5" in by_rule[(1, "active_within_cohort")]["reason"]
    assert "1.7" in by_rule[(2, "range:retention_rate")]["reason"]
    assert json.loads(by_rule[(4, "accepted_values:cohort_grain")]["row"])["cohort_grain"] == "fortnight"


def test_an_arrow_batch_is_gated_as_its_rows_would_be():
    from schemas.contracts import RETRACTED
    from transforms.staging import retractable_batch

    rows = [cohort(0, 2), cohort(1, 5), cohort(2, 1, rate=1.7), cohort(4, 1, grain="fortnight"),
            {**cohort(5, 9), RETRACTED: True}, cohort(6, 3)]
    as_dicts = gate("retention_cohorts", rows, "run-1", NOW)
    as_arrow = gate_arrow("retention_cohorts", retractable_batch("retention_cohorts", rows), "run-1", NOW)
    assert [(o.expectation, o.success, o.unexpected_count) for o in as_arrow.outcomes] == [
        (o.expectation, o.success, o.unexpected_count) for o in as_dicts.outcomes]
    assert [(q["rule"], q["row_key"], q["reason"]) for q in as_arrow.quarantined] == [
        (q["rule"], q["row_key"], q["reason"]) for q in as_dicts.quarantined]
    landed = lambda passed: sorted((r["period_index"], bool(r.get(RETRACTED))) for r in passed)
    assert landed(as_arrow.passed.to_pylist()) == landed(as_dicts.passed) == [(0, False), (5, True), (6, False)]


@pytest.mark.parametrize("table, rows", [
    ("order_attribution", attribution("o1") + attribution("o2", credits=(0.25, 0.75), status="refunded")),
    ("retention_cohorts", [cohort(0, 4), cohort(1, 2, grain="week")]),
    ("touchpoints", [touch("t1"), touch("t2")])])
def test_a_clean_frame_gets_the_outcomes_great_expectations_gives_it_without_its_run(table, rows, warehouse):
    from transforms.dq_checkpoint import checkpoint
    from transforms.dq_gate import row_frame
    from transforms.dq_suites import validate

    gated = gate(table, rows, "run-1", NOW)
    by_rule = lambda outcomes: sorted(outcomes, key=lambda o: o.expectation)
    assert by_rule(gated.outcomes) == by_rule(validate(table, "rows", row_frame(table, rows)))
    assert gated.outcomes and all(o.success and o.unexpected_count == 0 and o.element_count == len(rows)
                                  for o in gated.outcomes)
    warehouse.commit({table: rows})
    landed = [o for o in checkpoint(warehouse, [table]) if o.expectation != "columns_match_contract"
              and o.expectation in {c.name for c in checks(table) if c.row_level or c.name == "unique_key"}]
    assert by_rule(landed) == by_rule(validate(table, "table", warehouse.query_frame(f'SELECT * FROM "{table}"')))
    assert all(type(o.element_count) is int for o in landed + gated.outcomes)  # JSON for BigQuery's load jobs


@pytest.mark.parametrize("broken", [{"active_customers": 5}, {"retention_rate": 1.7}, {"retention_rate": float("nan")},
                                    {"currency": None}, {"cohort_grain": "fortnight"}, {"period_index": -1},
                                    {"retention_rate_on_or_after": None}, {"period_index": 0}])
def test_a_frame_with_a_row_that_may_break_an_expectation_goes_to_great_expectations(broken):
    from transforms.dq_suites import surely_passing
    from transforms.duckdb_warehouse import arrow_batch

    with duckdb.connect() as con:
        con.register("batch", arrow_batch("retention_cohorts", [cohort(0, 2), {**cohort(1, 1), **broken}]))
        first_row = lambda sql: con.execute(sql).fetchone()
        kind = "table" if broken == {"period_index": 0} else "rows"  # the key twice: only the table's suite checks it
        assert surely_passing("retention_cohorts", kind, first_row, "batch") is None


def test_good_data_lands_published_with_passing_results_and_no_alert(warehouse, receiver, tmp_path):
    landing = ValidatedLanding(warehouse, QualityConfig(webhook_url=Secret(value=receiver.url),
                                                        data_docs_dir=str(tmp_path / "docs")), "backfill")
    result = landing.land({"order_attribution": attribution("o1"), "retention_cohorts": [cohort(0, 4), cohort(1, 2)],
                           "touchpoints": [touch("t1")]}, {("orders", 0): 7})
    assert result.published is not None and not result.blocked and not result.warned
    assert receiver.received == []
    assert _published(warehouse, "SELECT count(*) FROM order_attribution") == [(4,)]
    failed = warehouse.connection.execute("SELECT count(*) FROM dq_results WHERE NOT success").fetchone()[0]
    checked = warehouse.connection.execute(
        "SELECT count(DISTINCT table_name) FROM dq_results WHERE stage = 'checkpoint'").fetchone()[0]
    assert failed == 0 and checked >= 3
    assert (tmp_path / "docs" / "index.html").exists()
    # the suites of the clean frames Great Expectations did not have to run still show
    assert {"rows", "table", "types"} <= {kind.name for kind in (tmp_path / "docs" / "expectations" / "touchpoints").iterdir()}


def test_a_block_failure_holds_back_publishing_and_alerts_once_per_incident(warehouse, receiver):
    landing = ValidatedLanding(warehouse, QualityConfig(webhook_url=Secret(value=receiver.url)), "stream")
    landing.land({"order_attribution": attribution("o1")}, {("orders", 0): 1})
    # Credits of 0.7 + 0.5: each row is fine on its own, the order is not (nor its revenue: 120 of 100).
    bad = landing.land({"order_attribution": attribution("o2", credits=(0.7, 0.5))}, {("orders", 0): 2})
    broken = ["credits_sum_to_one", "every_model_credits_the_order_value"]
    assert [o.expectation for o in bad.blocked] == broken
    assert bad.published is None
    assert _published(warehouse, "SELECT DISTINCT order_id FROM order_attribution") == [("o1",)]
    assert _published(warehouse, "SELECT next_offset FROM source_offsets") == [(1,)]
    [alert] = receiver.received
    assert alert["table"] == "order_attribution" and alert["severity"] == "block"
    assert [f["expectation"] for f in alert["failed"]] == broken
    assert "o2" in alert["failed"][0]["observed_value"] and "1.2" in alert["failed"][0]["observed_value"]
    assert alert["text"] and alert["blocks"][0]["type"] == "section"  # Slack's incoming-webhook format
    recorded = warehouse.connection.execute(
        "SELECT severity, observed_value FROM dq_results WHERE expectation = 'credits_sum_to_one' AND NOT success"
    ).fetchall()
    assert len(recorded) == 1 and recorded[0][0] == "block"
    # The failure persists through the next flush: recorded again, not alerted again.
    again = landing.land({"touchpoints": [touch("t9")]}, {("orders", 0): 3})
    assert again.published is None and len(receiver.received) == 1
    # A correction clears it: published again; a new failure later is a new incident.
    fixed = landing.land({"order_attribution": attribution("o2", credits=(0.5, 0.5))}, {("orders", 0): 4})
    assert fixed.published is not None and len(receiver.received) == 1
    assert _published(warehouse, "SELECT count(DISTINCT order_id) FROM order_attribution") == [(2,)]
    landing.land({"order_attribution": attribution("o3", credits=(0.9, 0.9))}, {("orders", 0): 5})
    assert len(receiver.received) == 2


def test_great_expectations_own_slack_and_email_actions_notify_once_per_incident(warehouse, receiver, mail,
                                                                              monkeypatch):
    """GX's SlackNotificationAction and EmailAction, configured as JSON with the webhook as ${VAR}: one Slack post
    and one mail for an incident, none while it persists, none for good data."""
    monkeypatch.setenv("JOURNEYS_TEST_SLACK_WEBHOOK", receiver.url)
    actions = [{"type": "slack", "name": "on_call_slack", "slack_webhook": "${JOURNEYS_TEST_SLACK_WEBHOOK}",
                "notify_on": "failure"},
               {"type": "email", "name": "on_call_mail", "smtp_address": "127.0.0.1", "smtp_port": str(mail.port),
                "receiver_emails": "oncall@example.com, data@example.com", "sender_alias": "journeys@example.com",
                "notify_on": "failure"}]
    landing = ValidatedLanding(warehouse, QualityConfig(gx_actions=json.dumps(actions)), "stream")
    landing.land({"order_attribution": attribution("o1")}, {("orders", 0): 1})
    assert receiver.received == [] and mail.messages == []
    landing.land({"order_attribution": attribution("o2", credits=(0.7, 0.5))}, {("orders", 0): 2})
    [slack] = receiver.received
    rendered = json.dumps(slack)
    assert slack["blocks"] and "order_attribution" in rendered and "credits_sum_to_one" in rendered
    [message] = mail.messages
    assert message["To"] == "oncall@example.com, data@example.com" and "journeys.order_attribution" in message["Subject"]
    landing.land({"touchpoints": [touch("t9")]}, {("orders", 0): 3})  # still failing: no new notification
    assert len(receiver.received) == 1 and len(mail.messages) == 1


def test_bad_rows_are_quarantined_not_landed_and_alerted_once(warehouse, receiver):
    landing = ValidatedLanding(warehouse, QualityConfig(webhook_url=Secret(value=receiver.url)), "stream")
    result = landing.land({"retention_cohorts": [cohort(0, 4), cohort(1, 6)]})
    assert result.quarantined == 1 and result.published is not None  # the gate removed the bad row
    assert _published(warehouse, "SELECT period_index FROM retention_cohorts") == [(0,)]
    assert _published(warehouse, "SELECT table_name, rule, severity FROM quarantine") == [
        ("retention_cohorts", "active_within_cohort", "block")]
    [alert] = receiver.received
    assert alert["failed"][0]["stage"] == "row_gate" and alert["failed"][0]["unexpected_count"] == 1
    landing.land({"retention_cohorts": [cohort(2, 7)]})  # the same rule, still broken: no new page
    assert len(receiver.received) == 1
    assert warehouse.connection.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 2


def test_a_restarted_job_does_not_page_again_for_an_incident_already_reported(warehouse, receiver):
    config = QualityConfig(webhook_url=Secret(value=receiver.url), max_event_age_hours=1)
    ValidatedLanding(warehouse, config, "stream").land({"touchpoints": [touch("t1", NOW - dt.timedelta(hours=5))]})
    assert [a["failed"][0]["expectation"] for a in receiver.received] == ["fresh_events"]
    assert receiver.received[0]["severity"] == "warn"
    restarted = ValidatedLanding(warehouse, config, "stream")
    result = restarted.land({"touchpoints": [touch("t2", NOW - dt.timedelta(hours=4))]})
    assert result.published is not None  # warn: recorded and alerted, still published
    assert len(receiver.received) == 1


def _journeys(*args, env=None, timeout=600):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.integration
def test_backfill_and_validate_on_the_real_broker_alert_once_per_incident_and_exit_by_severity(
        kafka, topic_prefix, tmp_path, receiver):
    """Generated events with a fifth of them malformed (the generator's knob): the backfill lands and publishes (the
    dead-letter rate is a warn), alerts once; `journeys validate` then exits 1 without paging again; a hand-made
    row that breaks a block rule makes it exit 2 and page once; good data (another topic set) pages never."""
    from pipelines.generate import GeneratorConfig, generate
    from pipelines.generate.sinks import produce
    from pipelines.kafka_topics import ensure_topics

    recent = (NOW - dt.timedelta(days=10)).replace(tzinfo=None).isoformat()
    env = {"JOURNEYS_ALERT_WEBHOOK": receiver.url}
    for prefix, malformed in ((topic_prefix, 0.2), (topic_prefix + "clean_", 0.0)):
        ensure_topics(kafka, prefix=prefix)
        produce(generate(GeneratorConfig(customers=40, days=10, seed=8, start=dt.datetime.fromisoformat(recent)),
                         b"dq-test", malformed=malformed), kafka, topic_prefix=prefix)
    clean = tmp_path / "clean.duckdb"
    done = _journeys("backfill", "--topic-prefix", topic_prefix + "clean_", "--warehouse", str(clean),
                     "--data-docs-dir", str(tmp_path / "clean_docs"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert receiver.received == [], "good data must not page"
    assert clean.with_suffix(".published.duckdb").exists()

    warehouse = tmp_path / "journeys.duckdb"
    done = _journeys("backfill", "--topic-prefix", topic_prefix, "--warehouse", str(warehouse),
                     "--data-docs-dir", str(tmp_path / "docs"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]  # a warn does not fail the backfill
    assert "FAILED dead_letter_rate [checkpoint, warn]" in done.stdout
    [alert] = receiver.received
    assert alert["table"] == "dead_letters" and alert["severity"] == "warn"
    assert [f["expectation"] for f in alert["failed"]] == ["dead_letter_rate"]
    assert 0.1 < float(alert["failed"][0]["observed_value"]) < 0.3
    assert alert["data_docs"].endswith("index.html") and (tmp_path / "docs" / "index.html").exists()
    with duckdb.connect(str(warehouse.with_suffix(".published.duckdb")), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM order_attribution").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM dq_results WHERE expectation = 'dead_letter_rate' AND NOT success"
                           ).fetchone()[0] == 1

    validated = _journeys("validate", "--warehouse", str(warehouse), "--data-docs-dir", str(tmp_path / "docs"),
                          env=env)
    assert validated.returncode == 1, validated.stdout + validated.stderr[-2000:]
    assert len(receiver.received) == 1, "the incident was already reported by the backfill"

    with duckdb.connect(str(warehouse)) as con:  # a broken row, as a bad hand fix or an old job would leave it
        con.execute("UPDATE order_attribution SET credit = credit + 0.25 "
                    "WHERE order_id = (SELECT min(order_id) FROM order_attribution) AND model = 'linear' "
                    "AND touch_index = 0 AND status = 'placed'")
    validated = _journeys("validate", "--warehouse", str(warehouse), "--table", "order_attribution", env=env)
    assert validated.returncode == 2, validated.stdout + validated.stderr[-2000:]
    assert "FAILED credits_sum_to_one [checkpoint, block]" in validated.stdout
    assert [a["table"] for a in receiver.received] == ["dead_letters", "order_attribution"]
    again = _journeys("validate", "--warehouse", str(warehouse), "--table", "order_attribution", env=env)
    assert again.returncode == 2 and len(receiver.received) == 2


def test_validate_finds_a_hand_changed_column_type_and_revenue_kept_on_a_cancelled_order(warehouse, receiver):
    """Damage the gate cannot see, made by hand in the warehouse: a column migrated to another type, and a cancelled
    order whose reversal took back only half its revenue. The checkpoint fails each, with its rule, once."""
    landing = ValidatedLanding(warehouse, QualityConfig(webhook_url=Secret(value=receiver.url)), "backfill")
    placed = attribution("o5", models=("linear",))
    half_back = [{**row, "status": "cancelled", "credit": row["credit"],
                  "revenue_credit": -row["revenue_credit"] / 2} for row in placed]
    placed, half_back = ([{**row, "group_rows": 2 * len(placed)} for row in rows] for rows in (placed, half_back))
    assert landing.land({"order_attribution": placed + half_back, "touchpoints": [touch("t1")]}).published is None
    [alert] = receiver.received
    assert [f["expectation"] for f in alert["failed"]] == ["no_revenue_from_cancelled_orders"]
    assert alert["failed"][0]["observed_value"] == "50"  # linear keeps 100 - 50 of the cancelled order
    warehouse.connection.execute('ALTER TABLE touchpoints ALTER view_through TYPE VARCHAR')
    config = QualityConfig(webhook_url=Secret(value=receiver.url))
    result = ValidatedLanding(warehouse, config, "validate").validate(["touchpoints"])
    [broken] = [o for o in result.outcomes if not o.success]
    assert (broken.expectation, broken.severity) == ("columns_match_contract", "block")
    assert broken.observed_value == "column=view_through, contract_type=bool, landed_type=string"
    assert [a["table"] for a in receiver.received] == ["order_attribution", "touchpoints"]


@pytest.mark.integration
@pytest.mark.bigquery
def test_on_bigquery_a_block_failure_holds_the_readers_dataset_back(bigquery_emulator, receiver, tmp_path):
    """The same validated landing on BigQuery (the emulator): readers' dataset refreshed by good commits only, the
    gate's quarantine and dq_results in BigQuery, one alert per incident; a duplicated key (BigQuery enforces no
    primary key) makes `journeys validate` exit 2."""
    import uuid

    from transforms.bigquery_warehouse import BigQueryTarget, BigQueryWarehouse

    target = BigQueryTarget("journeys-local", f"dq_{uuid.uuid4().hex[:10]}", endpoint=bigquery_emulator)
    warehouse = BigQueryWarehouse(target)
    rows = lambda dataset, sql: [tuple(r.values()) for r in warehouse.client.query(sql.format(d=dataset)).result()]
    try:
        landing = ValidatedLanding(warehouse, QualityConfig(webhook_url=Secret(value=receiver.url)), "stream")
        assert landing.land({"order_attribution": attribution("o1")}, {("orders", 0): 1}).published == warehouse.published
        bad = landing.land({"order_attribution": attribution("o2", credits=(0.7, 0.5)),
                            "retention_cohorts": [cohort(0, 4), cohort(1, 6)]}, {("orders", 0): 2})
        assert [o.expectation for o in bad.blocked] == ["credits_sum_to_one", "every_model_credits_the_order_value"]
        assert bad.published is None and bad.quarantined == 1
        readers = "SELECT DISTINCT order_id FROM `{d}.order_attribution` ORDER BY 1"
        assert rows(warehouse.published, readers) == [("o1",)]
        assert rows(warehouse.published, "SELECT next_offset FROM `{d}.source_offsets`") == [(1,)]
        assert rows(warehouse.dataset, readers) == [("o1",), ("o2",)]  # landed, held back from readers
        assert rows(warehouse.dataset, "SELECT table_name, rule FROM `{d}.quarantine`") == [
            ("retention_cohorts", "active_within_cohort")]
        assert rows(warehouse.dataset, "SELECT count(*) FROM `{d}.dq_results` WHERE NOT success AND "
                                       "expectation = 'credits_sum_to_one'") == [(1,)]
        assert sorted(a["table"] for a in receiver.received) == ["order_attribution", "retention_cohorts"]
        fixed = landing.land({"order_attribution": attribution("o2")}, {("orders", 0): 3})
        assert fixed.published == warehouse.published and len(receiver.received) == 2
        assert rows(warehouse.published, readers) == [("o1",), ("o2",)]
        assert rows(warehouse.published, "SELECT next_offset FROM `{d}.source_offsets`") == [(3,)]
        assert rows(warehouse.published, "SELECT count(*) FROM `{d}.quarantine`") == [(1,)]

        args = ["--bigquery-project", target.project, "--bigquery-dataset", target.dataset,
                "--bigquery-endpoint", bigquery_emulator, "--data-docs-dir", str(tmp_path / "docs")]
        assert _journeys("validate", *args, env={"JOURNEYS_ALERT_WEBHOOK": receiver.url}).returncode == 0
        warehouse.commit({"touchpoints": [touch("t1")]})
        warehouse.client.query(f"INSERT INTO `{warehouse.dataset}.touchpoints` SELECT * FROM "
                               f"`{warehouse.dataset}.touchpoints`").result()
        validated = _journeys("validate", *args, "--table", "touchpoints",
                              env={"JOURNEYS_ALERT_WEBHOOK": receiver.url})
        assert validated.returncode == 2, validated.stdout + validated.stderr[-2000:]
        assert "FAILED unique_key [checkpoint, block]" in validated.stdout
        assert [a["table"] for a in receiver.received][2:] == ["touchpoints"]
    finally:
        warehouse.close()


@pytest.mark.parametrize("kind", ["types", "rule"])
def test_a_clean_small_frame_of_the_checkpoint_gets_great_expectations_outcomes_without_its_run(kind, warehouse,
                                                                                                monkeypatch):
    from transforms import dq_suites
    from transforms.dq_checkpoint import types_frame

    warehouse.commit({"order_attribution": attribution("o1") + attribution("o2", credits=(0.25, 0.75))})
    rule = contract("order_attribution").table_rules[1] if kind == "rule" else None
    clean = types_frame(warehouse, "order_attribution") if kind == "types" else warehouse.query_frame(rule.query)
    broken = clean.copy()
    broken.loc[0, "landed_type" if kind == "types" else "value"] = "int" if kind == "types" else 1.5
    shortcut = [dq_suites.validate("order_attribution", kind, frame, rule=rule) for frame in (clean, broken)]
    monkeypatch.setattr(dq_suites, "SMALL_FRAME_TYPES", {})  # Great Expectations for every frame
    ran = [dq_suites.validate("order_attribution", kind, frame, rule=rule) for frame in (clean, broken)]
    outcome = lambda outcomes: [(o.expectation, o.expectation_type, o.success, o.unexpected_count, o.element_count)
                                for o in outcomes]
    assert outcome(shortcut[0]) == outcome(ran[0]) and all(o.success for o in shortcut[0])
    assert all(o.validation is None for o in shortcut[0]) and all(o.validation for o in ran[0])  # no GX run
    assert outcome(shortcut[1]) == outcome(ran[1]) and not any(o.success for o in shortcut[1])


def test_the_alert_webhook_is_neither_in_the_configs_repr_nor_in_its_pickle(tmp_path, monkeypatch):
    import pickle

    url = "https://hooks.example.com/services/T000/B000/very-secret-token"
    monkeypatch.setenv("JOURNEYS_ALERT_WEBHOOK", url)
    config = QualityConfig.from_env(max_event_age_hours=2)
    assert config.webhook_url.reveal() == url
    assert "very-secret-token" not in repr(config) and b"very-secret-token" not in pickle.dumps(config)
    assert pickle.loads(pickle.dumps(config)).webhook_url.reveal() == url  # resolved where it is used
    from_file = tmp_path / "webhook"
    from_file.write_text(url + "\n")
    config = QualityConfig(webhook_url=Secret(file=str(from_file)))
    assert b"very-secret-token" not in pickle.dumps(config) and "very-secret-token" not in repr(config)
    with pytest.raises(TypeError, match="cannot travel"):  # a bare value stays in its process
        pickle.dumps(QualityConfig(webhook_url=Secret(value=url)))
