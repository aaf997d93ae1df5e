-- LTV:CAC's customers: one row per customer with a purchase on or before as_of_date, the
-- customer-level step of ltv_cac.sql, which reads this query's result as customer_base. The job
-- computes it once and keeps it for ltv_cac.sql's aggregates (each of which would otherwise read the
-- orders again: the optimizer shares no scan between them). In a SQL editor, create a view
-- customer_base from this query, then run ltv_cac.sql.
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
-- Columns: customer_id, channel (the acquisition channel: the CRM acquisition_channel, else the
-- first purchase's channel, else 'unknown'), acquisition_month, mature (observed for the whole
-- window), window_revenue (net revenue in the first window_months after the first purchase), clv
--
-- One SELECT with derived tables rather than a WITH list: a query whose plan holds common table
-- expressions is not found again in Spark's cache when a later query's own WITH list reads it (their
-- references are numbered anew), and ltv_cac.sql reads the kept result through its WITH list.

SELECT v.customer_id, v.channel, v.acquisition_month, v.mature, v.window_revenue, p.clv
FROM (
  -- each buyer's window revenue: the orders on or before as_of_date within window_months of the
  -- first purchase
  SELECT q.customer_id, q.channel, q.acquisition_month,
         date_add(add_months(q.first_date, :window_months), -1) <= :as_of_date AS mature,
         sum(CASE WHEN to_date(o.order_ts) >= q.first_date
                   AND to_date(o.order_ts) < add_months(q.first_date, :window_months)
                  THEN o.net_amount ELSE 0D END) AS window_revenue
  FROM (
    -- acquired: every buyer's acquisition month, first purchase date and acquisition channel
    SELECT s.customer_id,
           trunc(s.first_purchase_ts, 'MM') AS acquisition_month,
           to_date(s.first_purchase_ts)     AS first_date,
           coalesce(a.acquisition_channel, s.first_purchase_channel, 'unknown') AS channel
    FROM customer_state s
    LEFT JOIN acquisition a ON a.customer_id = s.customer_id
    WHERE s.first_purchase_ts IS NOT NULL
  ) q
  JOIN orders o ON o.customer_id = q.customer_id AND o.order_date <= :as_of_date
  GROUP BY q.customer_id, q.channel, q.acquisition_month, q.first_date
) v
LEFT JOIN segment_members p ON p.customer_id = v.customer_id AND p.segment_type = 'all'
