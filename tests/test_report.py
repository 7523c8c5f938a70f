"""`journeys report` and the tables' documentation: the figures from query rows (fast), a report of an empty
warehouse, and the demo's data end to end — generated into the real broker, backfilled into DuckDB, reported, and
rendered in headless Debian Chromium, whose charts must have drawn their series without a console error."""
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from pipelines import report
from schemas.contracts import TABLES_DOC, contracts, tables_markdown

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / ".local" / "test-artifacts"  # kept after the run: the screenshot to look at


def _attribution(model, channel, revenue, currency="EUR"):
    return {"model": model, "channel": channel, "currency": currency, "conversions": 1.0,
            "revenue": Decimal(revenue)}


def test_table_documentation_in_the_repo_is_generated_from_the_contracts():
    assert TABLES_DOC.read_text() == tables_markdown(), "schemas/TABLES.md is stale: run `journeys docs`"
    text = tables_markdown()
    for table in contracts().values():
        assert f"### `{table.table}`" in text
        assert all(f"| `{column.name}` |" in text for column in table.columns)
        assert "Primary key: " + ", ".join(f"`{k}`" for k in table.primary_key) in text
    assert "Partitioned by: `order_time`" in text and "`credits_sum_to_one` (block)" in text
    assert "- `channel_roi`: Channel ROI by attribution model" in text


def test_attribution_is_compared_in_the_reporting_currency():
    from transforms.currency import ExchangeRates

    rows = report.in_reporting_currency(
        [_attribution("last_touch", "Email", "100", "USD"), _attribution("last_touch", "Email", "8", "EUR"),
         _attribution("last_touch", "Direct", "100", "EUR"), _attribution("markov", "Email", "50"),
         _attribution("markov", "Direct", "150")], ExchangeRates())
    figure = report.attribution_figure(rows)
    bars = {trace.name: dict(zip(trace.x, trace.y)) for trace in figure.data}
    assert bars == {"last_touch": {"Email": 100.0, "Direct": 100.0}, "markov": {"Email": 50.0, "Direct": 150.0}}
    shares = report.revenue_shares(rows)
    assert shares["last_touch"] == {"Email": 0.5, "Direct": 0.5}
    moved = {trace.name: dict(zip(trace.y, trace.x)) for trace in report.data_driven_vs_heuristic_figure(rows).data}
    assert moved == {"markov − last_touch": {"Direct": 25.0, "Email": -25.0}}


def _cohort(grain, start, segment_type, segment, period, size, rate, ltv):
    return {"cohort_grain": grain, "cohort_start": dt.date.fromisoformat(start), "segment_type": segment_type,
            "segment": segment, "period_index": period, "cohort_size": size, "retention_rate": rate,
            "cumulative_revenue_per_customer": Decimal(ltv), "currency": "EUR"}


def test_curves_weight_cohorts_by_size_and_a_short_history_is_shown_by_week():
    rows = [_cohort("week", "2026-09-07", "acquisition_channel", "Email", 0, 10, 1.0, "100"),
            _cohort("week", "2026-09-07", "acquisition_channel", "Email", 1, 10, 0.5, "150"),
            _cohort("week", "2026-09-14", "acquisition_channel", "Email", 0, 30, 1.0, "20"),
            _cohort("month", "2026-09-01", "acquisition_channel", "Email", 0, 40, 1.0, "40")]
    assert report.cohort_rows(rows) == rows[:3]  # one month of history: weekly cohorts
    curves = report.segment_curves(report.cohort_rows(rows), "acquisition_channel", "cumulative_revenue_per_customer")
    assert curves == {"Email": ([0, 1], [40.0, 150.0])}  # (10×100 + 30×20) / 40; week 1 only the first cohort
    six_months = rows + [_cohort("month", "2026-09-01", "all", "all", p, 40, 0.2, "50") for p in range(6)]
    assert {row["cohort_grain"] for row in report.cohort_rows(six_months)} == {"month"}


def test_the_retention_heatmap_menu_shows_one_segment_at_a_time():
    rows = [_cohort("week", "2026-09-07", "all", "all", 0, 10, 1.0, "1"),
            _cohort("week", "2026-09-07", "all", "all", 1, 10, 0.3, "1"),
            _cohort("week", "2026-09-07", "social_engagement", "before_first_order", 0, 4, 1.0, "1")]
    figure = report.retention_heatmap_figure(rows)
    assert [trace.name for trace in figure.data] == ["all customers", "social_engagement: before_first_order"]
    assert [trace.visible for trace in figure.data] == [True, False]
    assert [list(row) for row in figure.data[0].z] == [[1.0, 0.3]]
    buttons = figure.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["all customers", "social_engagement: before_first_order"]
    assert buttons[1].args[0] == {"visible": [False, True]}


def test_social_effects_show_each_lift_with_its_interval_and_sample_sizes():
    row = lambda platform, metric, kind, lift, low, high: {  # noqa: E731
        "platform": platform, "metric": metric, "lift_kind": kind, "engaged": 0.5 if kind == "difference" else 75.0,
        "not_engaged": 0.25 if kind == "difference" else 50.0, "lift": lift, "lift_ci_low": low,
        "lift_ci_high": high, "engaged_n": 1200, "not_engaged_n": 30, "engaged_customers": 40,
        "not_engaged_customers": 60, "resamples": 200, "confidence": 0.95, "currency": "EUR"}
    shown = report.social_effects_rows([row("x", "ltv", "ratio", 0.5, 0.1, 0.9),
                                        row("all", "retention_30d", "difference", 0.25, None, None),
                                        row("all", "order_value", "ratio", 0.5, -0.02, 1.1)])
    assert [(r["platform"], r["metric"]) for r in shown] == [("all", "order_value"), ("all", "retention_30d"),
                                                             ("x", "ltv")]
    assert shown[0]["lift"] == "+50.0 %" and shown[0]["95% interval"] == "[-2.0 %, +110.0 %]"
    assert shown[0]["engaged"] == "75.00 EUR" and shown[0]["n (engaged / not)"] == "1,200 / 30"
    assert shown[1]["lift"] == "+25.0 pp" and shown[1]["95% interval"] == "no interval"
    assert shown[1]["not engaged"] == "25.0%"


def test_a_report_of_an_empty_warehouse_says_so(tmp_path, warehouse):
    warehouse.publish()
    index = report.write_report(tmp_path / "journeys.published.duckdb", tmp_path / "report")
    page = index.read_text()
    assert page.count("No rows in the warehouse yet.") == len(report.CHART_IDS)
    assert (tmp_path / "report" / "plotly.min.js").stat().st_size > 1_000_000
    assert "<h3><code>touchpoints</code></h3>" in page  # the table documentation


def test_a_missing_warehouse_is_one_clear_error(tmp_path):
    from pipelines.cli import main

    assert main(["report", "--warehouse", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def _journeys(*args, timeout=900):
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"})
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_the_demo_report_renders_in_headless_chromium(kafka, topic_prefix, tmp_path):
    from browser import FLAGS, render

    # The demo's history (deploy/local/demo.sh): 300 customers over 60 days, mixed formats, 1 % malformed.
    _journeys("generate", "--customers", "300", "--days", "60", "--seed", "7", "--format", "mixed",
              "--topic-prefix", topic_prefix, "--out-of-order", "0.05", "--malformed", "0.01")
    warehouse = tmp_path / "journeys.duckdb"
    _journeys("backfill", "--topic-prefix", topic_prefix, "--warehouse", str(warehouse),
              "--max-event-age-hours", "8760")
    started = time.monotonic()
    out = _journeys("report", "--warehouse", str(warehouse.with_suffix(".published.duckdb")),
                    "--out", str(tmp_path / "report"))
    seconds = time.monotonic() - started
    index = tmp_path / "report" / "index.html"
    assert f"report: {index}" in out
    screenshot = ARTIFACTS / "report.png"
    rendered = render(index, screenshot)
    shutil.copytree(tmp_path / "report", ARTIFACTS / "report", dirs_exist_ok=True)
    print(f"report generated in {seconds:.1f} s; screenshot {screenshot} (chromium {' '.join(FLAGS)})")

    assert rendered["console_errors"] == []
    charts = rendered["charts"]
    assert set(charts) == set(report.CHART_IDS)
    for chart_id, chart in charts.items():
        assert chart["svgs"] > 0 and chart["traces"], chart_id
        assert chart["bars"] + chart["lines"] + chart["heatmaps"] > 0, f"{chart_id} drew nothing: {chart}"
    models = set(report.HEURISTIC_MODELS) | set(report.DATA_DRIVEN_MODELS)
    assert set(charts["attribution"]["legend"]) == models
    assert set(charts["data-driven-vs-heuristic"]["legend"]) == {"markov − last_touch", "shapley − last_touch"}
    assert {"Organic Social", "Paid Social", "Email", "Direct"} <= set(charts["ltv"]["legend"])
    assert charts["retention-heatmap"]["heatmaps"] == 1
    assert "all customers" in charts["retention-heatmap"]["traces"]
    assert any(t.startswith("social_engagement: ") for t in charts["retention-heatmap"]["traces"])
    assert {"engaged", "not_engaged"} <= set(charts["social-impact"]["legend"])
    assert {f"{topic_prefix}{t}" for t in ("orders", "web_sessions", "social_interactions")} >= set(
        charts["dead-letters"]["legend"]) and charts["dead-letters"]["bars"] > 0
    assert "passed" in charts["data-quality"]["legend"]
    assert screenshot.stat().st_size > 100_000
