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
# customer_id. ``ingest.validate`` hands the lines partitioned and sorted by it, so
# ``silver.orders`` groups by it and the order with no shuffle; it never reaches a table.
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
IS_PURCHASE: Final = "is_purchase"
# customer_days columns (one row per customer and day with at least one order)
ORDERS_COUNT: Final = "orders"
PURCHASES: Final = "purchases"
PURCHASE_VALUE: Final = "purchase_value"

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
# previous versions until vacuum). They hold every clean order, after as_of_date too (holdout).
SILVER_TABLES: Final = frozenset({ORDERS, CUSTOMER_DAYS})
# Tables that only ever grow, keyed by run_id.
APPEND_TABLES: Final = frozenset({QUARANTINE, RUNS})

# Quarantine table columns (besides run_id / as_of_date added by the writer).
Q_SOURCE_TABLE: Final = "source_table"
Q_RULE: Final = "rule"
Q_REASON: Final = "reason"
Q_RAW: Final = "raw"
