-- LTV:CAC by acquisition channel and month, by channel, and by segment.
--
-- Inputs
--   customer_base     ltv_cac_customers.sql's result, one row per customer with a purchase on or
--                     before as_of_date: customer_id, channel, acquisition_month, mature,
--                     window_revenue, clv
--   marketing_spend   month (first of month), channel, spend (may be empty)
--   segment_members   one row per customer and segment type: segment_type ('all' for every customer),
--                     segment, customer_id, clv (predicted lifetime value; null when not modelled)
-- Parameters
--   as_of_date        DATE, inclusive; later orders and spend months are ignored
--   window_months     INT, the realized-LTV window
--
-- Definitions
--   new customer     acquired in the month of its first purchase (an order with is_purchase),
--                    through the CRM acquisition_channel, else the first purchase's channel, else 'unknown'
--   CAC              spend / new customers, counting only months whose spend is known for the channel;
--                    a channel or month without a spend row has unknown CAC (null), never zero
--   cac_coverage     share of the new customers acquired in a month with known spend
--   cac_status       known | partial_spend (coverage < 1) | no_new_customers | unknown_spend
--   ltv_realized     mean net revenue in the first window_months after the first purchase, over the
--                    customers observed for the whole window (ltv_customers of them)
--   ltv_predicted    mean predicted CLV of the same customers (all of them, matured or not)
--   segment CAC      mean of the members' channel CAC (so channels weigh by the segment's mix), over
--                    members whose channel CAC is known

WITH spend AS (
  SELECT channel, trunc(month, 'MM') AS month, sum(spend) AS spend
  FROM marketing_spend
  WHERE channel IS NOT NULL AND trunc(month, 'MM') <= trunc(:as_of_date, 'MM')
  GROUP BY channel, trunc(month, 'MM')
),

cohort_value AS (
  SELECT channel, acquisition_month AS month,
         count(*)                                            AS new_customers,
         count_if(mature)                                    AS ltv_customers,
         avg(CASE WHEN mature THEN window_revenue END)       AS ltv_realized,
         avg(clv)                                            AS ltv_predicted
  FROM customer_base
  GROUP BY channel, acquisition_month
),

channel_month AS (
  SELECT coalesce(c.channel, s.channel)        AS channel,
         coalesce(c.month, s.month)            AS month,
         coalesce(c.new_customers, 0)          AS new_customers,
         CASE WHEN s.spend IS NOT NULL THEN coalesce(c.new_customers, 0) ELSE 0 END AS new_customers_with_spend,
         s.spend,
         coalesce(c.ltv_customers, 0)          AS ltv_customers,
         c.ltv_realized,
         c.ltv_predicted
  FROM cohort_value c
  FULL OUTER JOIN spend s ON s.channel = c.channel AND s.month = c.month
),

channel_spend AS (
  SELECT channel,
         sum(new_customers)            AS new_customers,
         sum(new_customers_with_spend) AS new_customers_with_spend,
         sum(spend)                    AS spend
  FROM channel_month
  GROUP BY channel
),

channel_value AS (
  SELECT channel,
         count_if(mature)                              AS ltv_customers,
         avg(CASE WHEN mature THEN window_revenue END) AS ltv_realized,
         avg(clv)                                      AS ltv_predicted
  FROM customer_base
  GROUP BY channel
),

channel_cac AS (
  SELECT s.channel, s.new_customers, s.new_customers_with_spend, s.spend,
         CASE WHEN s.new_customers_with_spend > 0 THEN s.spend / s.new_customers_with_spend END AS cac,
         coalesce(v.ltv_customers, 0) AS ltv_customers, v.ltv_realized, v.ltv_predicted
  FROM channel_spend s
  LEFT JOIN channel_value v ON v.channel = s.channel
),

segment_level AS (
  SELECT m.segment_type, m.segment,
         count(*)                                        AS new_customers,
         count(c.cac)                                    AS new_customers_with_spend,
         avg(c.cac)                                      AS cac,
         count_if(b.mature)                              AS ltv_customers,
         avg(CASE WHEN b.mature THEN b.window_revenue END) AS ltv_realized,
         avg(b.clv)                                      AS ltv_predicted
  FROM segment_members m
  JOIN customer_base b ON b.customer_id = m.customer_id
  LEFT JOIN channel_cac c ON c.channel = b.channel
  GROUP BY m.segment_type, m.segment
),

all_levels AS (
  SELECT 'channel_month' AS level, 'acquisition_channel' AS segment_type, channel AS segment, month,
         new_customers, new_customers_with_spend, spend,
         CASE WHEN new_customers_with_spend > 0 THEN spend / new_customers_with_spend END AS cac,
         ltv_customers, ltv_realized, ltv_predicted
  FROM channel_month
  UNION ALL
  SELECT 'channel', 'acquisition_channel', channel, CAST(NULL AS DATE),
         new_customers, new_customers_with_spend, spend, cac,
         ltv_customers, ltv_realized, ltv_predicted
  FROM channel_cac
  UNION ALL
  SELECT 'segment', segment_type, segment, CAST(NULL AS DATE),
         new_customers, new_customers_with_spend, CAST(NULL AS DOUBLE), cac,
         ltv_customers, ltv_realized, ltv_predicted
  FROM segment_level
)

SELECT level, segment_type, segment, month, new_customers, spend, cac,
       CASE WHEN new_customers_with_spend > 0 AND new_customers_with_spend = new_customers THEN 'known'
            WHEN new_customers_with_spend > 0 THEN 'partial_spend'
            WHEN spend IS NOT NULL THEN 'no_new_customers'
            ELSE 'unknown_spend' END                       AS cac_status,
       try_divide(new_customers_with_spend, new_customers) AS cac_coverage,
       ltv_customers, ltv_realized, ltv_predicted,
       try_divide(ltv_realized, cac)                       AS ltv_to_cac,
       try_divide(ltv_predicted, cac)                      AS ltv_predicted_to_cac,
       :window_months                                      AS window_months
FROM all_levels
