"""Canonical column and table names: the one place they are spelt out.

Stage modules import names from here instead of scattering string literals through filters.
"""

from __future__ import annotations

from typing import Final

# --- run columns carried by every output row -------------------------------------------------
RUN_ID: Final = "run_id"
AS_OF_DATE: Final = "as_of_date"

# --- input contract: canonical columns ----------------------------------------------------------
CUSTOMER_ID: Final = "customer_id"
ORDER_ID: Final = "order_id"
ORDER_TS: Final = "order_ts"
AMOUNT: Final = "amount"
QUANTITY: Final = "quantity"
PRODUCT_CATEGORY: Final = "product_category"
CHANNEL: Final = "channel"
CURRENCY: Final = "currency"

SIGNUP_TS: Final = "signup_ts"
ACQUISITION_CHANNEL: Final = "acquisition_channel"
COUNTRY: Final = "country"
AGE: Final = "age"
BIRTH_YEAR: Final = "birth_year"
GENDER: Final = "gender"
INCOME_BAND: Final = "income_band"
INDUSTRY: Final = "industry"
COMPANY_SIZE: Final = "company_size"

EVENT_TS: Final = "event_ts"
EVENT_TYPE: Final = "event_type"
DEVICE: Final = "device"

MONTH: Final = "month"
SPEND: Final = "spend"

# Internal: the trimmed source customer id next to the clean transactions' (pseudonymous)
# customer_id. ``ingest.validate`` groups the lines into orders by it right after the shuffle by
# customer (no second shuffle); it never reaches a table.
SOURCE_KEY: Final = "_segspark_source_key"

EVENT_TYPES: Final = (
    "session_start",
    "page_view",
    "add_to_cart",
    "checkout",
    "purchase",
    "login",
    "feature_used",
)

TRANSACTIONS_REQUIRED: Final = (CUSTOMER_ID, ORDER_ID, ORDER_TS, AMOUNT)
TRANSACTIONS_OPTIONAL: Final = (QUANTITY, PRODUCT_CATEGORY, CHANNEL, CURRENCY)
CUSTOMERS_REQUIRED: Final = (CUSTOMER_ID,)
CUSTOMERS_OPTIONAL: Final = (
    SIGNUP_TS,
    ACQUISITION_CHANNEL,
    COUNTRY,
    AGE,
    BIRTH_YEAR,
    GENDER,
    INCOME_BAND,
    INDUSTRY,
    COMPANY_SIZE,
)
EVENTS_REQUIRED: Final = (CUSTOMER_ID, EVENT_TS, EVENT_TYPE)
EVENTS_OPTIONAL: Final = (CHANNEL, DEVICE)
SPEND_REQUIRED: Final = (MONTH, CHANNEL, SPEND)

INPUT_COLUMNS: Final = {
    "transactions": (TRANSACTIONS_REQUIRED, TRANSACTIONS_OPTIONAL),
    "customers": (CUSTOMERS_REQUIRED, CUSTOMERS_OPTIONAL),
    "events": (EVENTS_REQUIRED, EVENTS_OPTIONAL),
    "marketing_spend": (SPEND_REQUIRED, ()),
}

# --- output tables ------------------------------------------------------------------------------
CUSTOMER_FEATURES: Final = "customer_features"
CUSTOMER_SEGMENTS: Final = "customer_segments"
RFM_GRID: Final = "rfm_grid"
SEGMENT_KPIS: Final = "segment_kpis"
COHORT_RETENTION: Final = "cohort_retention"
LTV_CAC: Final = "ltv_cac"
SEGMENT_TRANSITIONS: Final = "segment_transitions"
DRIFT: Final = "drift"
RECOMMENDATIONS: Final = "recommendations"
QUARANTINE: Final = "quarantine"
RUNS: Final = "runs"
# the input files (or Delta versions) each run took: what the next run compares (``segspark.refresh``)
INPUT_MANIFEST: Final = "input_manifest"
# the customers ``segspark erase`` removed: a tag of their key and when, so no later run takes their
# rows dated up to then back from the inputs (``ingest.validation``: rule ``erased_customer``)
ERASURES: Final = "erasures"
ERASED_TAG: Final = "erased_tag"
ERASED_AT: Final = "erased_at"
REPORT_SUMMARY: Final = "report_summary"
CLUSTER_PROFILES: Final = "cluster_profiles"
CLV_VALIDATION: Final = "clv_validation"
CLV_FIT: Final = "clv_fit"
CHURN_METRICS: Final = "churn_metrics"
CLUSTERING_SWEEP: Final = "clustering_sweep"
CUSTOMER_SCORES: Final = "customer_scores"  # per-customer CLV and churn scores (the scores stage)

# --- silver tables: built once per run right after ingest, every later stage reads them ----------
ORDERS: Final = "orders"
CUSTOMER_DAYS: Final = "customer_days"

# orders columns (one row per customer and order; docs/architecture.md, "The tables")
ORDER_DATE: Final = "order_date"
NET_AMOUNT: Final = "net_amount"
GROSS_AMOUNT: Final = "gross_amount"
RETURNED_AMOUNT: Final = "returned_amount"
LINES: Final = "lines"
CATEGORIES: Final = "categories"
# orders: the 64-bit hashes of the order's clean source lines (customer id left out), so an
# incremental refresh finds a new line that copies one ingested before (``segspark.refresh``)
LINE_HASHES: Final = "line_hashes"
# orders: the order's return lines, each (the day it was recorded, the amount returned > 0), sorted;
# empty without returns. A return recorded after the order's day is why churn's features at a past
# cutoff count the order as it was then (``segspark.churn``), not as it is now
RETURNS: Final = "returns"
RETURN_DAY: Final = "day"
RETURN_AMOUNT: Final = "amount"
IS_PURCHASE: Final = "is_purchase"
# customer_days columns (one row per customer and day with at least one order)
ORDERS_COUNT: Final = "orders"
PURCHASES: Final = "purchases"
PURCHASE_VALUE: Final = "purchase_value"
# customer_state: one row per customer, from the orders on or before as_of_date (``silver.customer_state``
# states every column's merge rule); customer_months: one row per customer and month with an order
CUSTOMER_STATE: Final = "customer_state"
CUSTOMER_MONTHS: Final = "customer_months"
FIRST_SEEN_TS: Final = "first_seen_ts"  # first order of any kind
LAST_SEEN_TS: Final = "last_seen_ts"
FIRST_PURCHASE_TS: Final = "first_purchase_ts"
LAST_PURCHASE_TS: Final = "last_purchase_ts"
FIRST_PURCHASE_ORDER_ID: Final = "first_purchase_order_id"
FIRST_PURCHASE_CHANNEL: Final = "first_purchase_channel"
ACQUISITION_MONTH: Final = "acquisition_month"
PURCHASE_DAYS: Final = "purchase_days"
BTYD_X: Final = "btyd_x"  # repeat purchase days (purchase_days - 1)
BTYD_T_X_DAYS: Final = "btyd_t_x_days"  # days from the first to the last purchase day
NET_SUMSQ: Final = "net_sumsq"
PURCHASE_VALUE_SUMSQ: Final = "purchase_value_sumsq"
GROSS_SUMSQ: Final = "gross_sumsq"

# Tables that keep one snapshot per as_of_date (a run replaces only its own date's partition).
SNAPSHOT_TABLES: Final = frozenset(
    {
        CUSTOMER_FEATURES,
        CUSTOMER_SEGMENTS,
        RFM_GRID,
        SEGMENT_KPIS,
        COHORT_RETENTION,
        LTV_CAC,
        SEGMENT_TRANSITIONS,
        DRIFT,
        RECOMMENDATIONS,
        REPORT_SUMMARY,
        CLUSTER_PROFILES,
        CLV_VALIDATION,
        CLV_FIT,
        CHURN_METRICS,
        CLUSTERING_SWEEP,
        CUSTOMER_SCORES,
    }
)
# Silver tables: replaced whole by every run (one overwrite commit; Delta history keeps the
# previous versions until vacuum). orders and customer_days hold every clean order, after as_of_date
# too (holdout); customer_state and customer_months the orders on or before the run's as_of_date.
SILVER_TABLES: Final = frozenset({ORDERS, CUSTOMER_DAYS, CUSTOMER_STATE, CUSTOMER_MONTHS})
# Tables that only ever grow, keyed by run_id.
APPEND_TABLES: Final = frozenset({QUARANTINE, RUNS, INPUT_MANIFEST, ERASURES})

# Quarantine table columns (besides run_id / as_of_date added by the writer).
Q_SOURCE_TABLE: Final = "source_table"
Q_RULE: Final = "rule"
Q_REASON: Final = "reason"
Q_RAW: Final = "raw"


# --- clv_validation: the values of its ``view`` column (one spelling; pipeline writes, report reads)
CLV_VIEW_TRACKING: Final = "tracking_curve"
CLV_VIEW_HISTOGRAM: Final = "frequency_histogram"
CLV_VIEW_HOLDOUT_BY_FREQUENCY: Final = "holdout_by_frequency"
# predicted vs actual holdout value per customer, by repeat-purchase band (0, 1, 2-3, 4+) and by the
# RFM segment at the calibration end: label = band or segment, actual/predicted = means per customer
CLV_VIEW_HOLDOUT_VALUE_BY_BAND: Final = "holdout_value_by_band"
CLV_VIEW_HOLDOUT_VALUE_BY_SEGMENT: Final = "holdout_value_by_segment"

# ---- columns of the derived tables: spelt here once; the stage modules and tables.py import them -----
# behaviour
# --- behaviour columns ---------------------------------------------------------------------------
MEAN_INTERPURCHASE_DAYS = "mean_interpurchase_days"  # mean days between consecutive purchases
STD_INTERPURCHASE_DAYS = "std_interpurchase_days"  # sample standard deviation of those gaps
LAST_INTERPURCHASE_DAYS = "last_interpurchase_days"  # gap that ended with the latest purchase
ORDERS_LAST_90D = "orders_last_90d"
ORDERS_PREV_90D = "orders_prev_90d"
TREND_90D = "trend_90d"  # orders_last_90d / orders_prev_90d; null when the previous window is empty
TREND_INDEX_90D = "trend_index_90d"  # (last - prev) / (last + prev) in [-1, 1]; null when both 0
CATEGORY_BREADTH = "category_breadth"  # distinct product categories bought
AVG_BASKET_SIZE = "avg_basket_size"  # mean units per purchase (orders with a known quantity)
CHANNEL_SHARE_PREFIX = "channel_share_"  # + channel: share of purchases with a known channel
CHANNEL_SHARE_OTHER = "channel_share_other"
# --- engagement columns --------------------------------------------------------------------------
HAS_EVENTS = "has_events"
SESSIONS_30D = "sessions_30d"
SESSIONS_90D = "sessions_90d"
ACTIVE_DAYS_30D = "active_days_30d"
ACTIVE_DAYS_90D = "active_days_90d"
PAGE_VIEWS_90D = "page_views_90d"
ADD_TO_CART_90D = "add_to_cart_90d"
CHECKOUTS_90D = "checkouts_90d"
PURCHASES_90D = "purchase_events_90d"
FEATURE_USES_90D = "feature_uses_90d"
CONVERSION_RATE_90D = "conversion_rate_90d"  # purchase events / sessions, last 90 days
DAYS_SINCE_LAST_LOGIN = "days_since_last_login"
DAYS_SINCE_LAST_VISIT = "days_since_last_visit"  # days since the latest event of any type
ENGAGEMENT_COUNTS: tuple[str, ...] = (
    SESSIONS_30D,
    SESSIONS_90D,
    ACTIVE_DAYS_30D,
    ACTIVE_DAYS_90D,
    PAGE_VIEWS_90D,
    ADD_TO_CART_90D,
    CHECKOUTS_90D,
    PURCHASES_90D,
    FEATURE_USES_90D,
)
ENGAGEMENT_RATES: tuple[str, ...] = (CONVERSION_RATE_90D,)
ENGAGEMENT_DAYS: tuple[str, ...] = (DAYS_SINCE_LAST_LOGIN, DAYS_SINCE_LAST_VISIT)
# --- demographics --------------------------------------------------------------------------------
AGE_BAND = "age_band"
# The only CRM columns that may reach the feature table (an allow-list: PII can never slip through).
DEMOGRAPHIC_COLUMNS: dict[str, str] = {
    SIGNUP_TS: "timestamp",
    ACQUISITION_CHANNEL: "string",
    COUNTRY: "string",
    AGE_BAND: "string",
    GENDER: "string",
    INCOME_BAND: "string",
    INDUSTRY: "string",
    COMPANY_SIZE: "string",
}


def channel_share_column(channel: str) -> str:
    """The feature column holding the share of purchases made through ``channel``."""
    return f"{CHANNEL_SHARE_PREFIX}{channel}"


# cohorts
COHORT_MONTH = "cohort_month"
DIMENSION = "dimension"
DIMENSION_VALUE = "dimension_value"
MONTHS_SINCE_FIRST = "months_since_first"
COHORT_SIZE = "cohort_size"
ACTIVE_CUSTOMERS = "active_customers"
RETENTION_RATE = "retention_rate"
REVENUE = "revenue"
CUMULATIVE_REVENUE_PER_CUSTOMER = "cumulative_revenue_per_customer"

# features
RECENCY_DAYS = "recency_days"
FREQUENCY = "frequency"
MONETARY = "monetary"
AVG_ORDER_VALUE = "avg_order_value"
FIRST_ORDER_TS = "first_order_ts"
LAST_ORDER_TS = "last_order_ts"
TENURE_DAYS = "tenure_days"
RETURN_RATE = "return_rate"
ORDERS_OTHER = "orders_other"
R_SCORE = "r_score"
F_SCORE = "f_score"
M_SCORE = "m_score"
RFM_CODE = "rfm_code"
RFM_SEGMENT = "rfm_segment"
CUSTOMERS = "customers"
REVENUE = "revenue"


def channel_column(channel: str) -> str:
    return f"orders_{channel}"


# kpis
PERSONA = "persona"
CLUSTER_ID = "cluster_id"
VALUE_TIER = "value_tier"
CLV = "clv"
CHURN_RISK = "churn_risk"
# customer_scores (clv.predict, churn)
P_ALIVE = "p_alive"
EXPECTED_PURCHASES = "expected_purchases"
EXPECTED_AVG_VALUE = "expected_avg_value"
CHURN_BAND = "churn_band"
# cluster_profiles (clustering.personas)
PERSONA_DESCRIPTION = "persona_description"
PROFILE_SIZE = "size"
PROFILE_SHARE = "share"
MEDIAN_PREFIX = "median_"
Z_PREFIX = "z_"
SEGMENT_TYPE = "segment_type"
SEGMENT = "segment"
KPI = "kpi"
VALUE = "value"

# lifecycle
LIFECYCLE_STAGE = "lifecycle_stage"
# segment_transitions output
DIMENSION = "dimension"
FROM_SEGMENT = "from_segment"
TO_SEGMENT = "to_segment"
CUSTOMERS = "customers"

# ltv_cac
LEVEL = "level"  # channel_month | channel | segment
NEW_CUSTOMERS = "new_customers"
CAC = "cac"
CAC_STATUS = "cac_status"
CAC_COVERAGE = "cac_coverage"
LTV_CUSTOMERS = "ltv_customers"
LTV_REALIZED = "ltv_realized"
LTV_PREDICTED = "ltv_predicted"
LTV_TO_CAC = "ltv_to_cac"
LTV_PREDICTED_TO_CAC = "ltv_predicted_to_cac"
WINDOW_MONTHS = "window_months"
