"""The reference implementation of the journey tables: DuckDB SQL over the raw events, written apart from the
pipeline (only GA4 channel grouping is shared: it has table-driven tests of its own). tests/test_journey_tables.py
compares every table with it; deploy/bench/throughput.py times it against the pipeline on the same events."""
from __future__ import annotations

import duckdb

from transforms.channel_grouping import ChannelRules
from transforms.currency import ExchangeRates


def _append(con, table: str, rows: list[tuple]) -> None:
    """Rows into a table, in bulk: through Arrow, whose column types DuckDB then casts to the declared ones
    (executemany inserts a row at a time, minutes for a million events)."""
    import pyarrow as pa

    if not rows:
        return
    names = [f"c{i}" for i in range(len(rows[0]))]
    staged = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})  # noqa: F841 (read by SQL)
    con.execute(f"insert into {table} select * from staged")


EVENT_TABLES = {
    "sessions": "session_id text, anonymous_id text, customer_id text, t timestamptz, channel text, source text, "
                "medium text, campaign text",
    "social": "event_id text, customer_id text, t timestamptz, platform text, kind text, is_paid bool, campaign text",
    "orders": "order_id text, customer_id text, anonymous_id text, t timestamptz, status text, amount decimal(18, 2), "
              "currency text",
}


def add_events(con, world: dict[str, list[dict]]) -> None:
    """Decoded records ({topic: records}) into the event tables of `event_tables`: a large world can come in parts."""
    rules = ChannelRules()
    sessions = []
    for s in world["web_sessions"]:
        traffic, channel = rules.session_channel(s)
        sessions.append((s["session_id"], s["anonymous_id"], s["customer_id"], s["session_start"], channel,
                         traffic.source, traffic.medium, traffic.campaign))
    _append(con, "sessions", sessions)
    _append(con, "social", [(s["event_id"], s["customer_id"], s["event_time"], s["platform"], s["interaction_type"],
                             s["is_paid"], s["campaign"]) for s in world["social_interactions"]])
    _append(con, "orders", [(o["order_id"], o["customer_id"], o["anonymous_id"], o["event_time"], o["status"],
                             o["amount"], o["currency"]) for o in world["orders"]])


def event_tables() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the reference's empty event tables (sessions with their GA4 channel, social,
    orders)."""
    con = duckdb.connect()
    con.execute("set timezone = 'UTC'")
    for table, columns in EVENT_TABLES.items():
        con.execute(f"create table {table} ({columns})")
    return con


def reference_connection(world: dict[str, list[dict]]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the events of `world` ({topic: decoded records}) and the reference views over them:
    touchpoints, placed, paths, engagement, customers, until."""
    con = event_tables()
    add_events(con, world)
    return reference_views(con)


def reference_views(con) -> duckdb.DuckDBPyConnection:
    """The reference views (touchpoints, placed, paths, engagement, customers, until) over the event tables."""
    con.execute("""
        create view touchpoints as
        with links as (
            select anonymous_id, customer_id, t from sessions where customer_id is not null
            union all select anonymous_id, customer_id, t from orders where anonymous_id is not null),
        first_link as (select anonymous_id, arg_min(customer_id, t) as customer_id, min(t) as t
                       from links group by anonymous_id)
        select s.session_id as touch_id,
               coalesce(s.customer_id,
                        case when f.t <= s.t + interval 30 day + interval 1 hour then f.customer_id end,
                        'anon:' || s.anonymous_id) as customer_key,
               s.t as touch_time, 'session' as kind, s.channel, coalesce(nullif(s.source, ''), '(direct)') as source,
               coalesce(nullif(s.medium, ''), '(none)') as medium, coalesce(s.campaign, '(not set)') as campaign,
               null as platform, false as view_through
        from sessions s left join first_link f using (anonymous_id)
        union all
        select event_id, customer_id, t, 'social',
               case when is_paid then 'Paid Social' else 'Organic Social' end, platform,
               case when is_paid then 'paid_social' else 'social' end, coalesce(campaign, '(not set)'), platform,
               kind in ('impression', 'video_view')
        from social
        where customer_id is not null and kind in ('impression', 'video_view', 'ad_click', 'link_click')""")
    con.execute("create table rates (currency text, rate decimal(18, 6))")  # the pipeline's defaults, into EUR
    con.executemany("insert into rates values (?, ?)", list(ExchangeRates().rates.items()))
    con.execute("""
        create view placed as
        select o.order_id, o.customer_id, o.t, o.amount, o.currency, x.rate,
               (o.amount - coalesce((select sum(r.amount) from orders r
                                     where r.order_id = o.order_id and r.status <> 'placed'), 0)) * x.rate as net,
               (select count(*) from orders r where r.order_id = o.order_id and r.status <> 'placed') as reversals,
               row_number() over (partition by o.customer_id order by o.t, o.order_id) as n
        from orders o join rates x using (currency) where o.status = 'placed'""")
    con.execute("""
        create view paths as  -- each placed order's touches in its 30-day lookback, oldest first
        select p.order_id, p.customer_id, p.t as order_time, p.currency, p.amount, p.rate, p.reversals,
               k.touch_id, k.touch_time, k.channel,
               row_number() over (partition by p.order_id order by k.touch_time, k.touch_id) as step,
               count(*) over (partition by p.order_id) as steps
        from placed p join touchpoints k
          on k.customer_key = p.customer_id and k.touch_time between p.t - interval 30 day and p.t
        union all
        select order_id, customer_id, t, currency, amount, rate, reversals, null, t, 'Direct', 1, 1 from placed p
        where not exists (select 1 from touchpoints k where k.customer_key = p.customer_id
                          and k.touch_time between p.t - interval 30 day and p.t)""")
    con.execute("""
        create view engagement as
        select customer_id, t, platform, kind from social
        where customer_id is not null and not is_paid and kind not in ('impression', 'ad_click', 'link_click')""")
    con.execute("""
        create view customers as
        with seen as (
            select customer_key as customer_id, touch_time as t from touchpoints where customer_key not like 'anon:%'
            union all select customer_id, t from orders
            union all select customer_id, t from social where customer_id is not null),
        devices as (
            select customer_id, anonymous_id from sessions where customer_id is not null
            union select customer_id, anonymous_id from orders where anonymous_id is not null),
        firsts as (
            select p.customer_id, p.t,
                   (select channel from paths x where x.order_id = p.order_id and x.step = x.steps) as last_channel,
                   (select channel from paths x where x.order_id = p.order_id and x.step = 1) as first_channel
            from placed p where p.n = 1)
        select c.customer_id, min(c.t) as first_seen, max(c.t) as last_seen, f.t as first_order_time,
               f.last_channel as acquisition_channel, f.first_channel as first_touch_channel,
               case when (select min(t) from engagement e where e.customer_id = c.customer_id) is null then 'none'
                    when f.t is null then 'engaged_no_order'
                    when (select min(t) from engagement e where e.customer_id = c.customer_id) <= f.t
                         then 'before_first_order'
                    else 'after_first_order' end as social_engagement,
               (select count(*) from placed p where p.customer_id = c.customer_id) as orders,
               round(coalesce((select sum(net) from placed p where p.customer_id = c.customer_id), 0), 2)
                   as net_revenue, 'EUR' as currency,
               (select count(*) from devices d where d.customer_id = c.customer_id) as devices
        from seen c left join firsts f using (customer_id)
        group by c.customer_id, f.t, f.last_channel, f.first_channel""")
    con.execute("create view until as select max(last_seen) as t from customers")
    return con


def query(con, text: str) -> list[dict]:
    cursor = con.execute(text)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


ORDER_ATTRIBUTION = """
    with p as (
        select *, coalesce(max(case when channel <> 'Direct' then step end) over (partition by order_id), steps)
                      as last_non_direct,
                  pow(2, -date_diff('microsecond', touch_time, order_time) / 86400e6 / 7) as decay
        from paths),
    credits as (
        select 'first_touch' as model, *, case when step = 1 then 1 else 0 end::double as credit from p
        union all select 'last_touch', *, case when step = steps then 1 else 0 end from p
        union all select 'last_non_direct', *, case when step = last_non_direct then 1 else 0 end from p
        union all select 'linear', *, 1 / steps from p
        union all select 'position_based', *, case when steps = 1 then 1 when steps = 2 then 0.5
                                                  when step in (1, steps) then 0.4 else 0.2 / (steps - 2) end from p
        union all select 'time_decay', *, decay / sum(decay) over (partition by order_id) from p),
    statuses as (
        select order_id, 'placed' as status, 1 as sign, amount from placed
        union all select order_id, status, -1, sum(amount) from orders where status <> 'placed' group by all)
    select c.order_id, c.model, c.step - 1 as touch_index, s.status, c.touch_id, c.customer_id, c.order_time,
           c.touch_time, c.channel, c.credit, s.sign * s.amount::double * c.credit as revenue_credit, c.currency,
           c.steps * 6 * count(*) over (partition by c.order_id, c.model, c.step) as group_rows
    from credits c join statuses s using (order_id)"""


CHANNEL_ATTRIBUTION_DAILY = f"""
    select cast(order_time as date) as date, model, channel, currency,
           sum(case when status = 'placed' then credit else -credit end) as conversions,
           round(sum(revenue_credit), 2) as revenue
    from ({ORDER_ATTRIBUTION}) where credit <> 0 group by all"""


def retention_reference(sql, grain) -> list[dict]:
    return query(sql, f"""
        with members as (
            select customer_id, date_trunc('{grain}', first_order_time)::date as cohort_start, 'all' as segment_type,
                   'all' as segment from customers where first_order_time is not null
            union all select customer_id, date_trunc('{grain}', first_order_time)::date, 'acquisition_channel',
                   acquisition_channel from customers where first_order_time is not null
            union all select customer_id, date_trunc('{grain}', first_order_time)::date, 'first_touch_channel',
                   first_touch_channel from customers where first_order_time is not null
            union all select customer_id, date_trunc('{grain}', first_order_time)::date, 'social_engagement',
                   social_engagement from customers where first_order_time is not null),
        cohorts as (select cohort_start, segment_type, segment, count(*) as cohort_size from members group by all),
        periods as (
            select c.*, unnest(generate_series(0, cast(
                {"datediff('week', c.cohort_start, date_trunc('week', (select t from until))::date)" if grain == "week"
                 else "datediff('month', c.cohort_start, date_trunc('month', (select t from until))::date)"}
                as bigint))) as period_index
            from cohorts c),
        activity as (
            select m.cohort_start, m.segment_type, m.segment, m.customer_id, p.net,
                   {"datediff('week', m.cohort_start, date_trunc('week', p.t)::date)" if grain == "week"
                    else "datediff('month', m.cohort_start, date_trunc('month', p.t)::date)"} as period_index
            from members m join placed p using (customer_id))
        select *, active_customers / cohort_size as retention_rate from (
        select '{grain}' as cohort_grain, 'EUR' as currency, x.cohort_start, x.segment_type, x.segment, x.period_index, x.cohort_size,
               (select count(distinct customer_id) from activity a where a.cohort_start = x.cohort_start
                and a.segment_type = x.segment_type and a.segment = x.segment and a.period_index = x.period_index)
                   as active_customers,
               (select count(distinct customer_id) from activity a where a.cohort_start = x.cohort_start
                and a.segment_type = x.segment_type and a.segment = x.segment and a.period_index >= x.period_index)
                   / x.cohort_size as retention_rate_on_or_after,
               coalesce((select sum(net) from activity a where a.cohort_start = x.cohort_start
                and a.segment_type = x.segment_type and a.segment = x.segment and a.period_index = x.period_index),
                0)::decimal(18, 2) as net_revenue,
               round(coalesce((select sum(net) from activity a where a.cohort_start = x.cohort_start
                and a.segment_type = x.segment_type and a.segment = x.segment and a.period_index <= x.period_index),
                0) / x.cohort_size, 2)::decimal(18, 2) as cumulative_revenue_per_customer
        from periods x)""")
