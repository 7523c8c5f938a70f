-- The cohort retention matrix: one row per cohort (grain, start, segment), its size, and the share of it active
-- in each of the first 13 periods (weeks or months) after the first order; later periods stay in retention_cohorts.
SELECT cohort_grain, cohort_start, segment_type, segment, MAX(cohort_size) AS cohort_size,
       MAX(CASE WHEN period_index = 0 THEN retention_rate END) AS period_0,
       MAX(CASE WHEN period_index = 1 THEN retention_rate END) AS period_1,
       MAX(CASE WHEN period_index = 2 THEN retention_rate END) AS period_2,
       MAX(CASE WHEN period_index = 3 THEN retention_rate END) AS period_3,
       MAX(CASE WHEN period_index = 4 THEN retention_rate END) AS period_4,
       MAX(CASE WHEN period_index = 5 THEN retention_rate END) AS period_5,
       MAX(CASE WHEN period_index = 6 THEN retention_rate END) AS period_6,
       MAX(CASE WHEN period_index = 7 THEN retention_rate END) AS period_7,
       MAX(CASE WHEN period_index = 8 THEN retention_rate END) AS period_8,
       MAX(CASE WHEN period_index = 9 THEN retention_rate END) AS period_9,
       MAX(CASE WHEN period_index = 10 THEN retention_rate END) AS period_10,
       MAX(CASE WHEN period_index = 11 THEN retention_rate END) AS period_11,
       MAX(CASE WHEN period_index = 12 THEN retention_rate END) AS period_12
FROM {tables}retention_cohorts
GROUP BY cohort_grain, cohort_start, segment_type, segment
