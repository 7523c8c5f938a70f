"""`journeys report`: the analyst's view of the warehouse as a static HTML report with plots (Plotly).

    the published DuckDB copy ─ read_report_data (SQL) ─ one figure per question ─ DIR/index.html + plotly.min.js

The folder needs no network to view: plotly.js sits beside the page. Every figure is built by a pure function from
query rows, so a table without rows yet gives a note instead of an empty chart, never an error.
"""
from __future__ import annotations

import datetime as dt
import html
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HEURISTIC_MODELS = ("first_touch", "last_touch", "last_non_direct", "linear", "position_based", "time_decay")
DATA_DRIVEN_MODELS = ("markov", "shapley")
BASELINE_MODEL = "last_touch"  # what the data-driven models are compared against: the default of most ad tools
SOCIAL_GROUPS = ("engaged", "not_engaged", "social_only", "mention_answered", "mention_unanswered")
MIN_MONTHLY_PERIODS = 6  # fewer months of history than this: weekly cohorts say more

QUERIES = {
    "attribution": """
        SELECT model, channel, currency, sum(conversions) AS conversions, sum(revenue) AS revenue
        FROM channel_attribution_daily GROUP BY ALL
        UNION ALL
        SELECT model, channel, currency, sum(conversions), sum(revenue)
        FROM data_driven_attribution GROUP BY ALL""",
    "retention": """
        SELECT cohort_start, segment_type, segment, period_index, cohort_size, retention_rate,
               cumulative_revenue_per_customer, currency, cohort_grain
        FROM retention_cohorts ORDER BY segment_type, segment, cohort_start, period_index""",
    "social": """
        SELECT "group", sum(customers) AS customer_months,
               sum(conversion_rate * customers) / nullif(sum(customers), 0) AS conversion_rate,
               sum(orders) AS orders, sum(revenue) AS revenue,
               sum(revenue) / nullif(sum(orders), 0) AS average_order_value,
               sum(repeat_rate_90d * first_orders_90d) / nullif(sum(first_orders_90d), 0) AS repeat_rate_90d,
               arg_max(ltv, month) AS ltv, any_value(currency) AS currency
        FROM social_impact WHERE platform = 'all' GROUP BY ALL""",
    "social_effects": """
        SELECT platform, metric, lift_kind, engaged, not_engaged, lift, lift_ci_low, lift_ci_high, engaged_n,
               not_engaged_n, engaged_customers, not_engaged_customers, resamples, confidence, as_of, currency
        FROM social_impact_effects ORDER BY platform <> 'all', platform, metric""",
    "dead_letters": """
        SELECT topic, stage, reason, count(*) AS records FROM dead_letters GROUP BY ALL ORDER BY records DESC""",
    "quality": """
        WITH latest AS (SELECT table_name, stage, arg_max(run_id, validated_at) AS run_id
                        FROM dq_results GROUP BY ALL)
        SELECT r.table_name, r.stage, any_value(r.run_kind) AS run_kind, max(r.validated_at) AS validated_at,
               count(*) FILTER (WHERE r.success) AS passed,
               count(*) FILTER (WHERE NOT r.success AND r.severity = 'warn') AS failed_warn,
               count(*) FILTER (WHERE NOT r.success AND r.severity = 'block') AS failed_block,
               string_agg(r.expectation, ', ') FILTER (WHERE NOT r.success) AS failing
        FROM dq_results AS r JOIN latest USING (table_name, stage, run_id) GROUP BY ALL ORDER BY 1, 2""",
    "quarantine": "SELECT table_name, rule, severity, count(*) AS rows FROM quarantine GROUP BY ALL ORDER BY 4 DESC",
    "offsets": """
        SELECT topic, sum(next_offset) AS committed, max(committed_at) AS committed_at
        FROM source_offsets GROUP BY ALL ORDER BY topic""",
    "event_times": """
        SELECT 'touchpoints' AS table_name, max(touch_time) AS latest_event FROM touchpoints
        UNION ALL SELECT 'order_attribution', max(order_time) FROM order_attribution
        UNION ALL SELECT 'dead_letters', max(kafka_timestamp) FROM dead_letters""",
    "daily_touches": """
        SELECT CAST(touch_time AS DATE) AS day, kind, count(*) AS touches FROM touchpoints GROUP BY ALL ORDER BY 1""",
    "headline": """
        SELECT (SELECT count(*) FROM customers) AS customers,
               (SELECT count(*) FROM customers WHERE orders > 0) AS buyers,
               (SELECT coalesce(sum(orders), 0) FROM customers) AS orders,
               (SELECT coalesce(sum(net_revenue), 0) FROM customers) AS net_revenue,
               (SELECT any_value(currency) FROM customers) AS currency,
               (SELECT count(*) FROM touchpoints) AS touchpoints,
               (SELECT count(*) FROM dead_letters) AS dead_letters,
               (SELECT coalesce(sum(next_offset), 0) FROM source_offsets) AS records_committed""",
}


def read_report_data(warehouse: Path) -> dict[str, list[dict]]:
    """{query name: rows as dicts} from a DuckDB warehouse, read-only (a writer may be running)."""
    from transforms.duckdb_warehouse import connect_read_only

    with connect_read_only(warehouse) as con:
        data = {}
        for name, query in QUERIES.items():
            cursor = con.execute(query)
            columns = [d[0] for d in cursor.description]
            data[name] = [dict(zip(columns, row)) for row in cursor.fetchall()]
    return data


# --- figures: pure functions of query rows --------------------------------------------------------------------------
def _figure(traces, title: str, **layout):
    import plotly.graph_objects as go

    figure = go.Figure(traces)
    figure.update_layout(title=title, template="plotly_white", height=layout.pop("height", 460),
                         margin=dict(t=60, l=70, r=30, b=60), legend=dict(title=layout.pop("legend_title", None)),
                         **layout)
    return figure


def _money(value) -> float:
    return float(value or 0)


def in_reporting_currency(rows: list[dict], rates) -> list[dict]:
    """Attribution rows with revenue in the reporting currency: channel_attribution_daily keeps each order's own
    currency, and revenue summed across currencies would mean nothing (data-driven rows are converted already)."""
    return [{**row, "revenue": rates.convert(row["revenue"] or 0, row["currency"]),
             "currency": rates.reporting_currency} for row in rows]


def attribution_figure(rows: list[dict]):
    """Revenue per channel, one bar series per attribution model, heuristic and data-driven side by side."""
    import plotly.graph_objects as go

    revenue = defaultdict(dict)
    for row in rows:
        revenue[row["model"]][row["channel"]] = revenue[row["model"]].get(row["channel"], 0.0) + _money(row["revenue"])
    channels = sorted({c for by_channel in revenue.values() for c in by_channel},
                      key=lambda c: -sum(by_channel.get(c, 0.0) for by_channel in revenue.values()))
    models = [m for m in (*HEURISTIC_MODELS, *DATA_DRIVEN_MODELS) if m in revenue]
    traces = [go.Bar(name=model, x=channels, y=[round(revenue[model].get(c, 0.0), 2) for c in channels])
              for model in models]
    currency = rows[0]["currency"] if rows else ""
    return _figure(traces, "Which channels earn orders? Attributed revenue per channel, by model",
                   barmode="group", yaxis_title=f"net revenue ({currency})", legend_title="model")


def revenue_shares(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{model: {channel: share of the model's revenue}}."""
    totals, by_channel = defaultdict(float), defaultdict(lambda: defaultdict(float))
    for row in rows:
        totals[row["model"]] += _money(row["revenue"])
        by_channel[row["model"]][row["channel"]] += _money(row["revenue"])
    return {model: {c: (v / totals[model] if totals[model] else 0.0) for c, v in channels.items()}
            for model, channels in by_channel.items()}


def data_driven_vs_heuristic_figure(rows: list[dict]):
    """Per channel, how many points of revenue share each data-driven model moves against last touch: positive
    where last touch under-credits a channel (typically the upper funnel: social, display, video)."""
    import plotly.graph_objects as go

    shares = revenue_shares(rows)
    baseline = shares.get(BASELINE_MODEL, {})
    channels = sorted({c for by_channel in shares.values() for c in by_channel})
    traces = [go.Bar(name=f"{model} − {BASELINE_MODEL}", orientation="h", y=channels,
                     x=[round(100 * (shares[model].get(c, 0.0) - baseline.get(c, 0.0)), 2) for c in channels])
              for model in DATA_DRIVEN_MODELS if model in shares and baseline]
    return _figure(traces, f"Data-driven vs heuristic: revenue share against {BASELINE_MODEL}, in points",
                   barmode="group", xaxis_title="share of revenue (percentage points)", legend_title="comparison",
                   height=max(420, 34 * len(channels)))


def cohort_rows(rows: list[dict]) -> list[dict]:
    """The retention rows of one grain: monthly cohorts once the history holds MIN_MONTHLY_PERIODS months, weekly
    ones before (a young warehouse has too few months to show a curve)."""
    monthly = [row for row in rows if row["cohort_grain"] == "month"]
    months = max((row["period_index"] for row in monthly), default=-1) + 1
    grain = "month" if months >= MIN_MONTHLY_PERIODS else "week"
    return [row for row in rows if row["cohort_grain"] == grain]


def _periods_label(rows: list[dict]) -> str:
    return f"{rows[0]['cohort_grain'] if rows else 'month'}s since the first order"


def _segment_label(row: dict) -> str:
    return "all customers" if row["segment_type"] == "all" else f"{row['segment_type']}: {row['segment']}"


def retention_heatmap_figure(rows: list[dict]):
    """Retention rate by cohort × periods since the first order; a menu picks the segment."""
    import plotly.graph_objects as go

    rows = cohort_rows(rows)
    grain = rows[0]["cohort_grain"] if rows else "month"

    cells = defaultdict(dict)
    for row in rows:
        cells[_segment_label(row)][(row["cohort_start"], row["period_index"])] = row["retention_rate"]
    segments = sorted(cells, key=lambda s: (s != "all customers", s))
    traces = []
    for index, segment in enumerate(segments):
        cohorts = sorted({cohort for cohort, _ in cells[segment]})
        periods = list(range(max(period for _, period in cells[segment]) + 1))
        z = [[cells[segment].get((cohort, p)) for p in periods] for cohort in cohorts]
        traces.append(go.Heatmap(name=segment, x=periods, y=[str(c) for c in cohorts], z=z, zmin=0, zmax=1,
                                 colorscale="Blues", visible=index == 0, colorbar=dict(title="retained"),
                                 texttemplate="%{z:.0%}",
                                 hovertemplate=f"cohort %{{y}}<br>{grain} %{{x}}<br>retained %{{z:.0%}}<extra></extra>"))
    buttons = [dict(label=segment, method="update",
                    args=[{"visible": [i == index for i in range(len(segments))]},
                          {"title.text": f"Do customers stay? Retention by {grain}ly cohort — {segment}"}])
               for index, segment in enumerate(segments)]
    figure = _figure(traces, f"Do customers stay? Retention by {grain}ly cohort — {segments[0] if segments else ''}",
                     xaxis_title=_periods_label(rows), yaxis_title=f"cohort (first order {grain})",
                     yaxis=dict(type="category", autorange="reversed"), height=520)
    if buttons:
        figure.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=0.75, xanchor="right", y=1.13,
                                               yanchor="top", showactive=True)])
    return figure


def segment_curves(rows: list[dict], segment_type: str, value: str) -> dict[str, tuple[list[int], list[float]]]:
    """{segment: (periods, cohort-size-weighted mean of `value` over the cohorts that reached the period)}."""
    sums = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for row in rows:
        if row["segment_type"] == segment_type and row[value] is not None:
            cell = sums[row["segment"]][row["period_index"]]
            cell[0] += float(row[value]) * row["cohort_size"]
            cell[1] += row["cohort_size"]
    return {segment: (sorted(periods), [round(periods[p][0] / periods[p][1], 4) for p in sorted(periods)])
            for segment, periods in sorted(sums.items())}


def ltv_figure(rows: list[dict]):
    """Cumulative net revenue per customer by months since the first order, one curve per acquisition channel."""
    import plotly.graph_objects as go

    rows = cohort_rows(rows)
    curves = segment_curves(rows, "acquisition_channel", "cumulative_revenue_per_customer")
    traces = [go.Scatter(name=channel, x=periods, y=values, mode="lines+markers")
              for channel, (periods, values) in curves.items()]
    currency = rows[0]["currency"] if rows else ""
    return _figure(traces, "Customer value (LTV) by acquisition channel", legend_title="acquisition channel",
                   xaxis_title=_periods_label(rows),
                   yaxis_title=f"cumulative net revenue per customer ({currency})")


def engagement_retention_figure(rows: list[dict]):
    """Retention curves by social engagement: do socially engaged customers come back more?"""
    import plotly.graph_objects as go

    rows = cohort_rows(rows)
    curves = segment_curves(rows, "social_engagement", "retention_rate")
    traces = [go.Scatter(name=segment, x=periods[1:], y=values[1:], mode="lines+markers")
              for segment, (periods, values) in curves.items() if len(periods) > 1]
    return _figure(traces, "Do engaged customers stay longer? Retention by social engagement",
                   legend_title="social engagement", xaxis_title=_periods_label(rows),
                   yaxis=dict(title="share of the cohort with an order in the period", tickformat=".0%"))


def social_impact_figure(rows: list[dict]):
    """Engaged vs non-engaged customers (all platforms, all months) on four measures, one colour per group."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    currency = rows[0]["currency"] if rows else ""
    measures = (("conversion_rate", "conversion rate / month"), ("average_order_value", f"order value ({currency})"),
                ("repeat_rate_90d", "repeat within 90 days"), ("ltv", f"LTV ({currency})"))
    figure = make_subplots(rows=1, cols=len(measures), subplot_titles=[label for _, label in measures])
    groups = sorted(rows, key=lambda r: SOCIAL_GROUPS.index(r["group"]) if r["group"] in SOCIAL_GROUPS else 99)
    colours = ("#1f77b4", "#7f7f7f", "#bcbd22", "#2ca02c", "#d62728")
    for col, (measure, _) in enumerate(measures, start=1):
        for index, row in enumerate(groups):
            value = row[measure]
            figure.add_trace(go.Bar(name=row["group"], legendgroup=row["group"], showlegend=col == 1,
                                    x=[row["group"]], y=[None if value is None else round(float(value), 4)],
                                    marker_color=colours[index % len(colours)]), row=1, col=col)
        if all(row[measure] is None for row in rows):
            figure.add_annotation(text="no first orders<br>90+ days old yet", showarrow=False, row=1, col=col,
                                  x=0.5, y=0.5, xref=f"x{col} domain", yref=f"y{col} domain")
    figure.update_xaxes(showticklabels=False)
    figure.update_layout(title="Does social pay? Engaged vs non-engaged customers (all platforms)",
                         template="plotly_white", height=430, legend=dict(title="group"),
                         margin=dict(t=90, l=60, r=30, b=40))
    return figure


EFFECT_METRICS = ("conversion", "order_value", "ltv", "repeat_rate_90d", "retention_30d", "retention_60d",
                  "retention_90d")


def _effect(value, kind: str) -> str:
    """A lift as people read it: a ratio in percent, a difference of shares in percentage points."""
    if value is None:
        return "—"
    return f"{value * 100:+.1f} {'%' if kind == 'ratio' else 'pp'}"


def social_effects_rows(rows: list[dict]) -> list[dict]:
    """social_impact_effects for a reader: each metric's values, its lift with the interval, and the sample sizes
    behind them (platform 'all' first)."""
    rank = lambda row: (row["platform"] != "all", row["platform"],  # noqa: E731
                        EFFECT_METRICS.index(row["metric"]) if row["metric"] in EFFECT_METRICS else 99)
    shown = []
    for row in sorted(rows, key=rank):
        money = row["metric"] in ("order_value", "ltv")
        value = lambda v: "—" if v is None else f"{v:,.2f} {row['currency']}" if money else f"{v:.1%}"  # noqa: E731
        low, high = (_effect(row[end], row["lift_kind"]) for end in ("lift_ci_low", "lift_ci_high"))
        interval = "no interval" if row["lift_ci_low"] is None else f"[{low}, {high}]"
        shown.append({"platform": row["platform"], "metric": row["metric"], "engaged": value(row["engaged"]),
                      "not engaged": value(row["not_engaged"]),
                      "lift": _effect(row["lift"], row["lift_kind"]),
                      f"{row['confidence']:.0%} interval": interval,
                      "n (engaged / not)": f"{row['engaged_n']:,} / {row['not_engaged_n']:,}",
                      "customers (engaged / not)": f"{row['engaged_customers']:,} / {row['not_engaged_customers']:,}"})
    return shown


def dead_letter_figure(rows: list[dict]):
    """Dead letters by reason, stacked by topic."""
    import plotly.graph_objects as go

    counts = defaultdict(lambda: defaultdict(int))
    for row in rows:
        counts[row["topic"]][f"{row['stage']}: {row['reason']}"] += row["records"]
    reasons = sorted({r for by_reason in counts.values() for r in by_reason})
    traces = [go.Bar(name=topic, orientation="h", y=reasons, x=[by_reason.get(r, 0) for r in reasons])
              for topic, by_reason in sorted(counts.items())]
    return _figure(traces, "Dead letters by reason and topic", barmode="stack", xaxis_title="records",
                   legend_title="topic", height=max(360, 30 * len(reasons)))


def quality_figure(rows: list[dict]):
    """Expectations of each table's latest validation run: passed, failed with warn, failed with block."""
    import plotly.graph_objects as go

    labels = [f"{row['table_name']} ({row['stage']})" for row in rows]
    series = (("passed", "passed", "#2ca02c"), ("failed_warn", "failed (warn)", "#ff7f0e"),
              ("failed_block", "failed (block)", "#d62728"))
    traces = [go.Bar(name=name, orientation="h", y=labels, x=[row[key] for row in rows], marker_color=colour)
              for key, name, colour in series]
    return _figure(traces, "Data quality: each table's latest validation", barmode="stack",
                   xaxis_title="expectations", legend_title="result", height=max(360, 26 * len(rows)))


def activity_figure(rows: list[dict]):
    """Touchpoints per day of event time, by kind: what the warehouse has seen, and up to when."""
    import plotly.graph_objects as go

    by_kind = defaultdict(dict)
    for row in rows:
        by_kind[row["kind"]][row["day"]] = row["touches"]
    traces = [go.Scatter(name=kind, x=[str(d) for d in sorted(days)], y=[days[d] for d in sorted(days)],
                         mode="lines", stackgroup="touches") for kind, days in sorted(by_kind.items())]
    return _figure(traces, "Touchpoints per day (event time), by kind", yaxis_title="touchpoints",
                   legend_title="kind", height=380)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    figures: tuple  # (chart id, figure builder, query name)
    intro: str = ""


SECTIONS = (
    Section("channels", "Which channels earn orders?",
            (("attribution", attribution_figure, "attribution"),
             ("data-driven-vs-heuristic", data_driven_vs_heuristic_figure, "attribution")),
            "Every order's revenue is credited to the channels of its touches, by each model. Data-driven models "
            "(Markov removal effect, Shapley) learn the credit from converting and non-converting paths."),
    Section("retention", "Do customers stay, and what are they worth?",
            (("retention-heatmap", retention_heatmap_figure, "retention"),
             ("ltv", ltv_figure, "retention"),
             ("engagement-retention", engagement_retention_figure, "retention")),
            "Cohorts by the week or month of the first order (months once the history holds six). Pick a segment "
            "(acquisition channel, first touch, social engagement) "
            "in the heatmap's menu. Curves average the cohorts that have reached each period, weighted by size."),
    Section("social", "Does social pay?", (("social-impact", social_impact_figure, "social"),),
            "Customers engaged on social (organic interactions, not impressions) against the non-engaged baseline; "
            "mentions the brand answered within 7 days against unanswered ones."),
    Section("quality", "Dead letters and data quality",
            (("dead-letters", dead_letter_figure, "dead_letters"), ("data-quality", quality_figure, "quality")),
            "Records that could not be decoded or broke an event rule land in dead_letters with their raw bytes and "
            "Kafka position; rows that broke a table's rules are held in quarantine."),
    Section("freshness", "Freshness", (("activity", activity_figure, "daily_touches"),)),
)
CHART_IDS = tuple(chart for section in SECTIONS for chart, _, _ in section.figures)


# --- the page -------------------------------------------------------------------------------------------------------
def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class='empty'>No rows.</p>"
    columns = columns or list(rows[0])
    cell = lambda v: "" if v is None else html.escape(f"{v:,.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(row[c])}</td>" for c in columns) + "</tr>" for row in rows)
    return (f"<table><thead><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _age(then, now: dt.datetime) -> str:
    if then is None:
        return "—"
    seconds = (now - then).total_seconds()
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 60:.0f} min"


def freshness_rows(data: dict, now: dt.datetime) -> list[dict]:
    rows = [{"what": f"topic {row['topic']}", "records committed": row["committed"],
             "last commit (UTC)": row["committed_at"], "age": _age(row["committed_at"], now)}
            for row in data["offsets"]]
    rows += [{"what": f"latest event in {row['table_name']}", "records committed": None,
              "last commit (UTC)": row["latest_event"], "age": _age(row["latest_event"], now)}
             for row in data["event_times"]]
    return rows


def table_docs_html() -> str:
    import mistune

    from schemas.contracts import tables_markdown

    body = tables_markdown().split("\n", 1)[1]  # the page has its own heading for the section
    return mistune.create_markdown(plugins=["table"])(body)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 24px 48px; color: #222; }
nav a { margin-right: 14px; } h1 { margin-bottom: 4px; } .meta { color: #666; margin-top: 0; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.kpi { border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 130px; }
.kpi b { display: block; font-size: 1.4em; } .kpi span { color: #666; font-size: .9em; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; } th { background: #f5f5f5; }
.chart { margin: 12px 0 28px; } .empty { color: #999; font-style: italic; } section { margin-top: 36px; }
"""


def render_html(data: dict[str, list[dict]], source: str, generated_at: dt.datetime, rates=None) -> str:
    from transforms.currency import ExchangeRates

    data = {**data, "attribution": in_reporting_currency(data["attribution"], rates or ExchangeRates())}
    head = data["headline"][0]
    kpis = (("customers", f"{head['customers']:,}"), ("buyers", f"{head['buyers']:,}"),
            ("orders", f"{head['orders']:,}"), (f"net revenue ({head['currency'] or '—'})",
                                                 f"{_money(head['net_revenue']):,.2f}"),
            ("touchpoints", f"{head['touchpoints']:,}"), ("records committed", f"{head['records_committed']:,}"),
            ("dead letters", f"{head['dead_letters']:,}"))
    parts = [f"<h1>Customer journeys</h1><p class='meta'>From {html.escape(source)}, generated "
             f"{generated_at:%Y-%m-%d %H:%M:%S} UTC.</p>",
             "<nav>" + "".join(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in SECTIONS)
             + "<a href='#tables'>Tables</a></nav>",
             "<div class='kpis'>" + "".join(f"<div class='kpi'><b>{v}</b><span>{html.escape(k)}</span></div>"
                                            for k, v in kpis) + "</div>"]
    for section in SECTIONS:
        parts.append(f"<section id='{section.anchor}'><h2>{html.escape(section.title)}</h2>")
        if section.intro:
            parts.append(f"<p>{html.escape(section.intro)}</p>")
        for chart_id, build, query in section.figures:
            if data[query]:
                figure = build(data[query])
                parts.append(figure.to_html(full_html=False, include_plotlyjs=False, div_id=chart_id,
                                            config={"displaylogo": False, "responsive": True}))
            else:
                parts.append(f"<div id='{chart_id}' class='chart empty'>No rows in the warehouse yet.</div>")
        if section.anchor == "social":
            resamples = data["social_effects"][0]["resamples"] if data["social_effects"] else 0
            parts += [f"<h3>Effects with intervals</h3><p>Customers engaged on the platform before their first order "
                      f"against customers not engaged before theirs (both known to the site), as of the latest "
                      f"event; intervals from {resamples} bootstrap resamples of customers, sampling error only "
                      f"(engaged customers may differ in other ways). Ratio lifts in %, differences of shares in "
                      f"percentage points (pp).</p>", _table(social_effects_rows(data["social_effects"]))]
        if section.anchor == "quality":
            parts += ["<h3>Latest validation per table</h3>", _table(data["quality"]),
                      "<h3>Quarantined rows</h3>", _table(data["quarantine"])]
        if section.anchor == "freshness":
            parts += ["<h3>Commits and latest event times</h3>", _table(freshness_rows(data, generated_at))]
        parts.append("</section>")
    parts.append(f"<section id='tables'><h2>Tables</h2>{table_docs_html()}</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Customer journeys report</title>"
            f"<style>{STYLE}</style><script src='plotly.min.js'></script></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(warehouse: Path, out: Path) -> Path:
    """Writes out/index.html and out/plotly.min.js; returns the page's path."""
    from plotly.offline import get_plotlyjs

    if not warehouse.exists():
        raise FileNotFoundError(f"no warehouse at {warehouse}: run journeys backfill or journeys stream first")
    data = read_report_data(warehouse)
    page = render_html(data, str(warehouse), dt.datetime.now(dt.timezone.utc))
    out.mkdir(parents=True, exist_ok=True)
    (out / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
