-- LTV:CAC's per-customer base: each buyer's acquisition month and channel, realized revenue in the
-- first window_months after the first purchase, and predicted CLV. ltv_cac.sql reads it as
-- customer_base; the pipeline computes it once and keeps it cached, because every level of
-- LTV:CAC (channel x month, channel, segment) aggregates it.
--
-- Inputs
--   orders            silver orders: customer_id, order_id, order_ts, order_date, net_amount (returns
--                     netted), channel, is_purchase (the job's one purchase definition)
--   customer_state    silver, one row per customer of the orders on or before as_of_date:
--                     customer_id, first_purchase_ts, first_purchase_channel (the channel of the
--                     first purchase, the smallest (order_ts, order_id); null without a purchase)
--   acquisition       one row per customer: customer_id, acquisition_channel (may be empty)
--   segment_members   one row per customer and segment type: segment_type ('all' for every customer),
--                     segment, customer_id, clv (predicted lifetime value; null when not modelled)
-- Parameters
--   as_of_date        DATE, inclusive; later orders are ignored
--   window_months     INT, the realized-LTV window
--
-- Definitions (ltv_cac.sql has the rest)
--   new customer     acquired in the month of its first purchase (an order with is_purchase),
--                    through the CRM acquisition_channel, else the first purchase's channel, else 'unknown'
--   mature           observed for the whole window: its last day is on or before as_of_date
--   window_revenue   net revenue of the orders from the first purchase's date to the day before the
--                    same date window_months later

WITH orders_as_of AS (
  SELECT customer_id, order_id, order_ts, net_amount, channel, is_purchase
  FROM orders
  WHERE order_date <= :as_of_date
),

first_purchase AS (
  SELECT customer_id,
         first_purchase_ts      AS first_ts,
         first_purchase_channel AS first_channel
  FROM customer_state
  WHERE first_purchase_ts IS NOT NULL
),

acquired AS (
  SELECT f.customer_id,
         trunc(f.first_ts, 'MM') AS acquisition_month,
         to_date(f.first_ts)     AS first_date,
         coalesce(a.acquisition_channel, f.first_channel, 'unknown') AS channel
  FROM first_purchase f
  LEFT JOIN acquisition a ON a.customer_id = f.customer_id
),

customer_value AS (
  SELECT q.customer_id, q.channel, q.acquisition_month,
         date_add(add_months(q.first_date, :window_months), -1) <= :as_of_date AS mature,
         sum(CASE WHEN to_date(o.order_ts) >= q.first_date
                   AND to_date(o.order_ts) < add_months(q.first_date, :window_months)
                  THEN o.net_amount ELSE 0D END) AS window_revenue
  FROM acquired q
  JOIN orders_as_of o ON o.customer_id = q.customer_id
  GROUP BY q.customer_id, q.channel, q.acquisition_month, q.first_date
),

customer_base AS (
  SELECT v.*, p.clv
  FROM customer_value v
  LEFT JOIN (SELECT customer_id, clv FROM segment_members WHERE segment_type = 'all') p
    ON p.customer_id = v.customer_id
)

SELECT customer_id, channel, acquisition_month, mature, window_revenue, clv
FROM customer_base
