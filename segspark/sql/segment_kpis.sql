-- Segment KPIs in long format (segment_type, segment, kpi, value), so BI tools pivot freely.
--
-- Input
--   segment_members  one row per customer and segment type: segment_type (rfm_segment,
--                    lifecycle_stage, persona, ..., and 'all'), segment ('unassigned' when the customer
--                    has none of that type), customer_id, monetary (net revenue), frequency (purchases),
--                    lifecycle_stage, clv, churn_risk, and the engagement counts sessions_30d,
--                    active_days_30d, sessions_90d, purchase_events_90d (0 for customers without events)
-- Parameters (BOOLEAN): whether an input exists, so KPIs that cannot be computed are left out
--   has_lifecycle, has_clv, has_churn, has_events
--
-- Definitions
--   customers / customer_share   members, and their share of all customers of the segment type
--   revenue / revenue_share      sum of monetary, and its share of the segment type's revenue
--   avg_order_value              revenue / purchases;  orders_per_customer: purchases / customers
--   repeat_purchase_rate         buyers with 2+ purchases / buyers
--   retention_rate               buyers in lifecycle stage new, active or reactivated / buyers
--   churn_rate                   buyers in lifecycle stage churned / buyers
--   avg_clv, avg_churn_risk      means of the predicted customer lifetime value and churn propensity
--   conversion_rate_90d          purchase events / sessions, last 90 days, summed over the segment
--   sessions_per_customer_30d, active_days_per_customer_30d   means over all members
--   engaged_share_30d            members with a session in the last 30 days / customers

WITH per_segment AS (
  SELECT segment_type,
         segment,
         count(*)                                             AS customers,
         count_if(frequency > 0)                              AS buyers,
         sum(coalesce(monetary, 0D))                          AS revenue,
         sum(coalesce(frequency, 0))                          AS purchases,
         count_if(frequency >= 2)                             AS repeat_buyers,
         count_if(frequency > 0 AND lifecycle_stage IN ('new', 'active', 'reactivated')) AS retained_buyers,
         count_if(frequency > 0 AND lifecycle_stage = 'churned')                       AS churned_buyers,
         avg(clv)                                             AS avg_clv,
         avg(churn_risk)                                      AS avg_churn_risk,
         sum(purchase_events_90d)                             AS purchase_events_90d,
         sum(sessions_90d)                                    AS sessions_90d,
         avg(sessions_30d)                                    AS sessions_per_customer_30d,
         avg(active_days_30d)                                 AS active_days_per_customer_30d,
         count_if(sessions_30d > 0)                           AS engaged_30d
  FROM segment_members
  GROUP BY segment_type, segment
),

with_totals AS (
  SELECT *,
         sum(customers) OVER (PARTITION BY segment_type) AS type_customers,
         sum(revenue)   OVER (PARTITION BY segment_type) AS type_revenue
  FROM per_segment
),

kpis AS (
  SELECT segment_type,
         segment,
         CAST(customers AS DOUBLE)                                   AS customers,
         CAST(try_divide(customers, type_customers) AS DOUBLE)       AS customer_share,
         CAST(revenue AS DOUBLE)                                     AS revenue,
         CAST(try_divide(revenue, type_revenue) AS DOUBLE)           AS revenue_share,
         CAST(try_divide(revenue, purchases) AS DOUBLE)              AS avg_order_value,
         CAST(try_divide(purchases, customers) AS DOUBLE)            AS orders_per_customer,
         CAST(try_divide(repeat_buyers, buyers) AS DOUBLE)           AS repeat_purchase_rate,
         CAST(try_divide(retained_buyers, buyers) AS DOUBLE)         AS retention_rate,
         CAST(try_divide(churned_buyers, buyers) AS DOUBLE)          AS churn_rate,
         CAST(avg_clv AS DOUBLE)                                     AS avg_clv,
         CAST(avg_churn_risk AS DOUBLE)                              AS avg_churn_risk,
         CAST(try_divide(purchase_events_90d, sessions_90d) AS DOUBLE) AS conversion_rate_90d,
         CAST(sessions_per_customer_30d AS DOUBLE)                   AS sessions_per_customer_30d,
         CAST(active_days_per_customer_30d AS DOUBLE)                AS active_days_per_customer_30d,
         CAST(try_divide(engaged_30d, customers) AS DOUBLE)          AS engaged_share_30d
  FROM with_totals
)

SELECT segment_type, segment, kpi, value
FROM kpis
UNPIVOT INCLUDE NULLS (value FOR kpi IN (
  customers, customer_share, revenue, revenue_share, avg_order_value, orders_per_customer,
  repeat_purchase_rate, retention_rate, churn_rate, avg_clv, avg_churn_risk,
  conversion_rate_90d, sessions_per_customer_30d, active_days_per_customer_30d, engaged_share_30d
))
WHERE (:has_lifecycle OR kpi NOT IN ('retention_rate', 'churn_rate'))
  AND (:has_clv       OR kpi <> 'avg_clv')
  AND (:has_churn     OR kpi <> 'avg_churn_risk')
  AND (:has_events    OR kpi NOT IN ('conversion_rate_90d', 'sessions_per_customer_30d',
                                     'active_days_per_customer_30d', 'engaged_share_30d'))
