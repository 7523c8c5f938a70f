"""Alerts on data-quality failures: one per incident, not one per window.

An incident starts when an expectation that held (or was never checked) fails, and ends when it holds again; only
its start alerts. What is failing now is known from the latest dq_results row of each expectation, so a restarted
job does not page again for an incident it already reported. The alert is a Slack-compatible JSON POST (`text` and
`blocks` for Slack, plus the same facts as fields for other receivers), one per table with new failures.
"""
from __future__ import annotations

import json
import logging
import urllib.request

from transforms.dq_suites import Outcome, QualityConfig, run_gx_actions

log = logging.getLogger("journeys.alerts")
Key = tuple[str, str, str]  # table, stage, expectation

LATEST_RESULTS = """SELECT table_name, stage, expectation, success FROM dq_results
QUALIFY row_number() OVER (PARTITION BY table_name, stage, expectation ORDER BY validated_at DESC, run_id DESC) = 1"""


def failing_now(warehouse) -> set[Key]:
    try:
        frame = warehouse.query_frame(LATEST_RESULTS)
    except Exception as error:  # noqa: BLE001 - a copy published before dq_results existed has no history
        log.warning("no data-quality history to deduplicate alerts with: %s", error)
        return set()
    return {(r.table_name, r.stage, r.expectation) for r in frame.itertuples() if not r.success}


class Alerter:
    def __init__(self, config: QualityConfig, failing: set[Key]):
        self.config = config
        self.failing = set(failing)

    def new_incidents(self, outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
        """Failures that start an incident, by table; remembers what fails and what recovered."""
        started: dict[str, list[Outcome]] = {}
        for o in outcomes:
            key = (o.table, o.stage, o.expectation)
            if o.success:
                self.failing.discard(key)
            elif key not in self.failing:
                self.failing.add(key)
                started.setdefault(o.table, []).append(o)
        return started

    def alert(self, incidents: dict[str, list[Outcome]], run_id: str, data_docs: str | None = None) -> None:
        for table, failed in sorted(incidents.items()):
            payload = alert_payload(table, failed, run_id, data_docs)
            log.warning("%s", payload["text"])
            if self.config.webhook_url:
                post_json(self.config.webhook_url.reveal(), payload)
            if self.config.gx_actions:
                try:
                    run_gx_actions(self.config.gx_actions, table, failed, run_id)
                except Exception as error:  # noqa: BLE001 - a failed notification never stops the pipeline
                    log.error("Great Expectations' actions failed for %s: %s", table, type(error).__name__)


def alert_payload(table: str, failed: list[Outcome], run_id: str, data_docs: str | None) -> dict:
    severity = "block" if any(o.severity == "block" for o in failed) else "warn"
    held = " — publishing held back" if any(o.severity == "block" and o.stage == "checkpoint" for o in failed) else ""
    headline = f"customer-journeys data quality: {table}: {len(failed)} expectation(s) failed ({severity}){held}"
    lines = [f"• `{o.expectation}` ({o.stage}, {o.severity}): observed {o.observed_value}"
             + (f", {o.unexpected_count} of {o.element_count} unexpected" if o.unexpected_count else "")
             for o in failed]
    docs = f"\nData Docs: {data_docs}" if data_docs else ""
    return {
        "text": headline,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*\n" + "\n".join(lines) + docs}}],
        "table": table, "severity": severity, "run_id": run_id, "data_docs": data_docs,
        "failed": [{"expectation": o.expectation, "expectation_type": o.expectation_type, "stage": o.stage,
                    "severity": o.severity, "observed_value": o.observed_value,
                    "unexpected_count": o.unexpected_count, "element_count": o.element_count} for o in failed],
    }


def post_json(url: str, payload: dict, timeout_s: float = 10.0) -> bool:
    """POST; a failed delivery is logged (without the URL: it is a secret) and never stops the pipeline."""
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except Exception as error:  # noqa: BLE001 - an alert receiver's failure must not fail the pipeline
        log.error("alert webhook delivery failed: %s", type(error).__name__)
        return False
