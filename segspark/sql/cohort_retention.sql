-- Cohort retention: acquisition-month cohorts x months since the first purchase, long format.
--
-- Inputs (the silver customer-level tables, both of the orders on or before as_of_date)
--   customer_state   one row per customer: customer_id, first_purchase_ts, first_purchase_channel,
--                    acquisition_month (month of the first purchase; null without a purchase)
--   customer_months  one row per customer and month with an order: customer_id, month (first day),
--                    purchases (purchase orders), net_amount (net of every order, returns netted)
--   acquisition      one row per customer: customer_id, acquisition_channel (may be empty)
-- Parameter
--   as_of_date    DATE, inclusive (the tables hold no later order)
--
-- Definitions
--   purchase          an order with is_purchase (net amount > purchase.min_net_amount)
--   cohort_month      month of the customer's first purchase
--   acquisition channel  the CRM acquisition_channel, else the channel of the first purchase, else 'unknown'
--   active_customers  cohort members with a purchase in that month (month 0 is always the whole cohort)
--   revenue           net amount of all the cohort's orders in that month (returns included)
--   cumulative_revenue_per_customer  revenue of months 0..m divided by the cohort size
-- Every cohort has a row for each month from 0 up to the month of as_of_date (the last one partial),
-- for dimension 'all' (dimension_value 'all') and for dimension 'acquisition_channel'.

WITH members AS (
  SELECT s.customer_id,
         s.acquisition_month AS cohort_month,
         coalesce(a.acquisition_channel, s.first_purchase_channel, 'unknown') AS acquisition_channel
  FROM customer_state s
  LEFT JOIN acquisition a ON a.customer_id = s.customer_id
  WHERE s.first_purchase_ts IS NOT NULL
),

member_dimensions AS (
  SELECT customer_id, cohort_month, 'all' AS dimension, 'all' AS dimension_value FROM members
  UNION ALL
  SELECT customer_id, cohort_month, 'acquisition_channel', acquisition_channel FROM members
),

cohorts AS (
  SELECT dimension, dimension_value, cohort_month, count(*) AS cohort_size
  FROM member_dimensions
  GROUP BY dimension, dimension_value, cohort_month
),

grid AS (
  SELECT c.dimension, c.dimension_value, c.cohort_month, c.cohort_size, m AS months_since_first
  FROM cohorts c
  LATERAL VIEW explode(
    sequence(0, CAST(months_between(trunc(:as_of_date, 'MM'), c.cohort_month) AS INT))
  ) months AS m
),

member_months AS (
  SELECT m.cohort_month,
         m.acquisition_channel,
         CAST(months_between(cm.month, m.cohort_month) AS INT) AS months_since_first,
         CASE WHEN cm.purchases > 0 THEN 1 ELSE 0 END AS purchased,
         cm.net_amount AS revenue
  FROM customer_months cm
  JOIN members m ON m.customer_id = cm.customer_id
  WHERE cm.month >= m.cohort_month
),

-- the active months summed once per cohort, channel and month (a few rows per cohort), then per
-- dimension: the customer months are joined to their cohort and channel once
channel_cells AS (
  SELECT cohort_month, acquisition_channel, months_since_first,
         sum(purchased) AS active_customers,
         sum(revenue)   AS revenue
  FROM member_months
  GROUP BY cohort_month, acquisition_channel, months_since_first
),

cells AS (
  SELECT 'all' AS dimension, 'all' AS dimension_value, cohort_month, months_since_first,
         sum(active_customers) AS active_customers,
         sum(revenue)          AS revenue
  FROM channel_cells
  GROUP BY cohort_month, months_since_first
  UNION ALL
  SELECT 'acquisition_channel', acquisition_channel, cohort_month, months_since_first,
         active_customers, revenue
  FROM channel_cells
)

SELECT g.cohort_month,
       g.dimension,
       g.dimension_value,
       g.months_since_first,
       g.cohort_size,
       coalesce(c.active_customers, 0)                              AS active_customers,
       try_divide(coalesce(c.active_customers, 0), g.cohort_size)   AS retention_rate,
       coalesce(c.revenue, 0D)                                      AS revenue,
       try_divide(
         sum(coalesce(c.revenue, 0D)) OVER (
           PARTITION BY g.dimension, g.dimension_value, g.cohort_month
           ORDER BY g.months_since_first
           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
         g.cohort_size)                                             AS cumulative_revenue_per_customer
FROM grid g
LEFT JOIN cells c
  ON  c.dimension = g.dimension
  AND c.dimension_value = g.dimension_value
  AND c.cohort_month = g.cohort_month
  AND c.months_since_first = g.months_since_first
