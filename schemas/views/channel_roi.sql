-- Channel ROI by attribution model: every model's conversions and revenue per channel over all time, its share of
-- the model's revenue, and, where channel_spend holds the channel's spend, revenue per unit spent and ROI.
-- Written in the SQL that DuckDB and BigQuery share; {tables} is where the tables live.
WITH attributed AS (
  SELECT model, channel, currency, SUM(conversions) AS conversions, SUM(revenue) AS revenue
  FROM {tables}channel_attribution_daily
  GROUP BY model, channel, currency
), spent AS (
  SELECT channel, currency, SUM(spend) AS spend
  FROM {tables}channel_spend
  GROUP BY channel, currency
)
SELECT a.model, a.channel, a.currency, ROUND(a.conversions, 3) AS conversions, a.revenue,
       ROUND(a.revenue / NULLIF(SUM(a.revenue) OVER (PARTITION BY a.model, a.currency), 0), 4) AS revenue_share,
       s.spend,
       ROUND(a.revenue / NULLIF(s.spend, 0), 4) AS revenue_per_spend,
       ROUND((a.revenue - s.spend) / NULLIF(s.spend, 0), 4) AS roi
FROM attributed AS a
LEFT JOIN spent AS s ON s.channel = a.channel AND s.currency = a.currency
