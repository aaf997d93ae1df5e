-- Cohort retention: acquisition-month cohorts x months since the first purchase, long format.
--
-- Inputs
--   orders        silver orders: customer_id, order_id, order_ts, order_date, net_amount (returns
--                 netted), channel, is_purchase (the job's one purchase definition)
--   acquisition   one row per customer: customer_id, acquisition_channel (may be empty)
-- Parameter
--   as_of_date    DATE, inclusive; later orders are ignored
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

WITH orders_as_of AS (
  SELECT customer_id, order_id, order_ts, net_amount, channel, is_purchase
  FROM orders
  WHERE order_date <= :as_of_date
),

first_purchase AS (
  SELECT customer_id,
         min(order_ts) AS first_ts,
         min_by(channel, named_struct('ts', order_ts, 'id', order_id)) AS first_channel
  FROM orders_as_of
  WHERE is_purchase
  GROUP BY customer_id
),

members AS (
  SELECT f.customer_id,
         trunc(f.first_ts, 'MM') AS cohort_month,
         coalesce(a.acquisition_channel, f.first_channel, 'unknown') AS acquisition_channel
  FROM first_purchase f
  LEFT JOIN acquisition a ON a.customer_id = f.customer_id
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

customer_months AS (
  SELECT o.customer_id,
         CAST(months_between(trunc(o.order_ts, 'MM'), m.cohort_month) AS INT) AS months_since_first,
         max(CASE WHEN o.is_purchase THEN 1 ELSE 0 END) AS purchased,
         sum(o.net_amount) AS revenue
  FROM orders_as_of o
  JOIN members m ON m.customer_id = o.customer_id
  WHERE trunc(o.order_ts, 'MM') >= m.cohort_month
  GROUP BY o.customer_id, 2
),

cells AS (
  SELECT d.dimension, d.dimension_value, d.cohort_month, cm.months_since_first,
         sum(cm.purchased) AS active_customers,
         sum(cm.revenue)   AS revenue
  FROM customer_months cm
  JOIN member_dimensions d ON d.customer_id = cm.customer_id
  GROUP BY d.dimension, d.dimension_value, d.cohort_month, cm.months_since_first
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
