"""Declared schemas of the output tables: one StructType per table, checked at every write.

``run_id`` and ``as_of_date`` are added by the writer and are not part of these declarations.
Every output table has an entry in ``SCHEMAS``; ``check_schema`` (called by ``Lakehouse.write``)
refuses a frame whose columns differ from the declaration:

- every declared column must be present, unless declared optional (``_opt``: present only with
  some configuration, such as the cluster columns when clustering is off);
- a column's type must equal the declared one, nullability aside; a narrower integer (byte, short,
  int where long is declared; byte, short where int is declared) and an all-null ``void`` column
  are tolerated and the writer casts them to the declared type, so the table always holds it;
- a column not declared is refused unless its name fully matches one of the table's ``PATTERNS``
  (config-dependent columns such as ``orders_<channel>``) with the pattern's type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pyspark.sql import types as T

from segspark import schema as S
from segspark.errors import SegsparkError

# the stage-owned column names, from their one spelling in schema.py
P_ALIVE: Final = S.P_ALIVE
EXPECTED_PURCHASES: Final = S.EXPECTED_PURCHASES
EXPECTED_AVG_VALUE: Final = S.EXPECTED_AVG_VALUE
CHURN_BAND: Final = S.CHURN_BAND
CLUSTER_ID: Final = S.CLUSTER_ID
PERSONA_DESCRIPTION: Final = S.PERSONA_DESCRIPTION
PROFILE_SIZE: Final = S.PROFILE_SIZE
PROFILE_SHARE: Final = S.PROFILE_SHARE
MEDIAN_PREFIX: Final = S.MEDIAN_PREFIX
Z_PREFIX: Final = S.Z_PREFIX

OPTIONAL_KEY: Final = "segspark.optional"


class SchemaMismatch(SegsparkError):
    """A frame written to an output table does not match the table's declared schema."""


def _f(name: str, type_: T.DataType) -> T.StructField:
    return T.StructField(name, type_, True)


def _opt(name: str, type_: T.DataType) -> T.StructField:
    """A declared column that only some configurations write."""
    return T.StructField(name, type_, True, metadata={OPTIONAL_KEY: True})


@dataclass(frozen=True)
class ColumnPattern:
    """Undeclared columns a table may carry: names that fully match ``regex``, all of type ``type_``."""

    regex: str
    type_: T.DataType
    why: str


STR, DBL, LONG, INT, BOOL, DATE, TS = (
    T.StringType(),
    T.DoubleType(),
    T.LongType(),
    T.IntegerType(),
    T.BooleanType(),
    T.DateType(),
    T.TimestampType(),
)

# --- silver ------------------------------------------------------------------------------------
RETURN_LINE: Final = T.StructType([_f(S.RETURN_DAY, DATE), _f(S.RETURN_AMOUNT, DBL)])
ORDERS_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.ORDER_ID, STR),
        _f(S.ORDER_TS, TS),  # the order's first line
        _f(S.ORDER_DATE, DATE),  # UTC date of order_ts
        _f(S.NET_AMOUNT, DBL),  # sum of the lines (returns are negative lines)
        _f(S.GROSS_AMOUNT, DBL),  # sum of the positive lines
        _f(S.RETURNED_AMOUNT, DBL),  # minus the sum of the negative lines (>= 0)
        _f(S.LINES, LONG),
        _f(S.QUANTITY, LONG),  # units on positive lines; null when no line has a quantity
        _f(S.CHANNEL, STR),  # smallest non-null line channel
        _f(S.CATEGORIES, T.ArrayType(STR, False)),  # distinct categories of positive lines
        _f(S.IS_PURCHASE, BOOL),  # net_amount > purchase.min_net_amount (the one purchase definition)
        # sorted hashes of the clean lines (an incremental refresh's copy check); null when the
        # orders were grouped outside ingest
        _f(S.LINE_HASHES, T.ArrayType(LONG, False)),
        # the return lines, (day, amount returned) each, sorted: an order as it was at a past date
        _f(S.RETURNS, T.ArrayType(RETURN_LINE, True)),
    ]
)
CUSTOMER_DAYS_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.ORDER_DATE, DATE),
        _f(S.ORDERS_COUNT, LONG),  # orders that day
        _f(S.PURCHASES, LONG),  # purchase orders that day (a purchase day has purchases > 0)
        _f(S.NET_AMOUNT, DBL),  # net of every order that day
        _f(S.PURCHASE_VALUE, DBL),  # net of the purchase orders that day (0 without purchase)
    ]
)

# one row per customer, orders on or before as_of_date; merge rules: silver.customer_state
CUSTOMER_STATE_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.FIRST_SEEN_TS, TS),  # first order of any kind
        _f(S.LAST_SEEN_TS, TS),
        _f(S.FIRST_PURCHASE_TS, TS),  # null without a purchase
        _f(S.LAST_PURCHASE_TS, TS),
        _f(S.FIRST_PURCHASE_ORDER_ID, STR),  # the first purchase: smallest (order_ts, order_id)
        _f(S.FIRST_PURCHASE_CHANNEL, STR),
        _f(S.ACQUISITION_MONTH, DATE),  # month of the first purchase
        _f(S.PURCHASE_DAYS, LONG),  # days with a purchase (RFM frequency)
        _f(S.BTYD_X, LONG),  # purchase_days - 1 (null without a purchase)
        _f(S.BTYD_T_X_DAYS, LONG),  # first to last purchase day, in days
        _f(S.ORDERS_COUNT, LONG),  # every order
        _f(S.PURCHASES, LONG),  # purchase orders
        _f(S.NET_AMOUNT, DBL),  # net of every order (RFM monetary)
        _f(S.NET_SUMSQ, DBL),  # sum of the squared order nets
        _f(S.PURCHASE_VALUE, DBL),  # net of the purchase orders
        _f(S.PURCHASE_VALUE_SUMSQ, DBL),
        _f(S.GROSS_AMOUNT, DBL),
        _f(S.GROSS_SUMSQ, DBL),
        _f(S.RETURNED_AMOUNT, DBL),
        # orders_<channel> (purchase orders) for each of rfm.channels: PATTERNS
        _f(S.ORDERS_OTHER, LONG),  # purchase orders of another or no channel
    ]
)
CUSTOMER_MONTHS_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.MONTH, DATE),  # first day of the month (UTC order dates)
        _f(S.ORDERS_COUNT, LONG),
        _f(S.PURCHASES, LONG),
        _f(S.NET_AMOUNT, DBL),  # net of every order that month
    ]
)

# --- model results (small, long format: BI pivots freely) --------------------------------------
CLV_FIT_SCHEMA: Final = T.StructType(
    [
        _f("model", STR),  # the model the row describes (chosen model, a candidate, or the spend model)
        _f("chosen", BOOL),
        _f("section", STR),  # fit | params | se | spend_params | spend_se | validation | candidate
        _f("name", STR),
        _f("value", DBL),
        _f("text", STR),  # non-numeric values (reasons, dates, messages)
    ]
)
CHURN_METRICS_SCHEMA: Final = T.StructType(
    [
        _f("section", STR),  # metric | importance | roc | lift | calibration | status
        _f("name", STR),
        _f("x", DBL),  # curve abscissa (null for scalar metrics)
        _f("value", DBL),
        _f("text", STR),
    ]
)
CLUSTERING_SWEEP_SCHEMA: Final = T.StructType(
    [
        _f("phase", STR),  # sweep (a candidate on the sweep sample) | final (the chosen model as fitted)
        _f("algorithm", STR),
        _f("k", LONG),
        _f("clusters", LONG),  # clusters found (density: excluding noise)
        _f("wcss", DBL),
        _f("silhouette", DBL),
        _f("calinski_harabasz", DBL),
        _f("davies_bouldin", DBL),
        _f("min_cluster_share", DBL),
        _f("stability", DBL),  # adjusted Rand index between half-sample fits (null: not measured)
        _f("fit_seconds", DBL),
        _f("engine", STR),  # local | spark | density | mllib (final)
        _f("knee", LONG),  # the k at the knee of this algorithm's WCSS curve
        _f("chosen", BOOL),
        _f("reason", STR),  # why this candidate was chosen (chosen rows only)
        _f("features", STR),  # the features clustered, comma-separated
        _f("customers", LONG),  # customers clustered
    ]
)

CUSTOMER_SCORES_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(P_ALIVE, DBL),
        _f(EXPECTED_PURCHASES, DBL),
        _f(EXPECTED_AVG_VALUE, DBL),
        _f(S.CLV, DBL),
        _f(S.VALUE_TIER, STR),
        _f(S.CHURN_RISK, DBL),
        _f(CHURN_BAND, STR),
    ]
)

CLV_VALIDATION_SCHEMA: Final = T.StructType(
    [
        # S.CLV_VIEW_*: tracking_curve | frequency_histogram | holdout_by_frequency |
        # holdout_value_by_band | holdout_value_by_segment (x: the row's order within its view)
        _f("view", STR),
        _f("x", DBL),
        _f("label", STR),
        _f("actual", DBL),
        _f("predicted", DBL),
        _f("customers", LONG),
    ]
)

# --- gold: one row per customer ---------------------------------------------------------------
_TYPES: Final = {"string": STR, "timestamp": TS, "double": DBL, "bigint": LONG, "int": INT, "boolean": BOOL}
CUSTOMER_FEATURES_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.RECENCY_DAYS, INT),
        _f(S.FREQUENCY, LONG),  # purchase days (RFM frequency)
        _f(S.ORDERS, LONG),  # purchase orders
        _f(S.MONETARY, DBL),
        _f(S.AVG_ORDER_VALUE, DBL),
        _f(S.FIRST_ORDER_TS, TS),
        _f(S.LAST_ORDER_TS, TS),
        _f(S.TENURE_DAYS, INT),
        _f(S.RETURN_RATE, DBL),
        # orders_<channel> for each of rfm.channels: PATTERNS
        _f(S.ORDERS_OTHER, LONG),
        _f(S.MEAN_INTERPURCHASE_DAYS, DBL),
        _f(S.STD_INTERPURCHASE_DAYS, DBL),
        _f(S.LAST_INTERPURCHASE_DAYS, INT),
        _f(S.ORDERS_LAST_90D, LONG),
        _f(S.ORDERS_PREV_90D, LONG),
        _f(S.TREND_90D, DBL),
        _f(S.TREND_INDEX_90D, DBL),
        _f(S.CATEGORY_BREADTH, INT),
        _f(S.AVG_BASKET_SIZE, DBL),
        # channel_share_<channel> for each of rfm.channels: PATTERNS
        _f(S.CHANNEL_SHARE_OTHER, DBL),
        _f(S.R_SCORE, INT),
        _f(S.F_SCORE, INT),
        _f(S.M_SCORE, INT),
        _f(S.RFM_CODE, STR),
        _f(S.RFM_SEGMENT, STR),
        _f(S.LIFECYCLE_STAGE, STR),
        _f(S.HAS_EVENTS, BOOL),
        *[_f(c, LONG) for c in S.ENGAGEMENT_COUNTS],
        *[_f(c, DBL) for c in S.ENGAGEMENT_RATES],
        *[_f(c, INT) for c in S.ENGAGEMENT_DAYS],
        *[_f(c, _TYPES[t]) for c, t in S.DEMOGRAPHIC_COLUMNS.items()],
    ]
)
CUSTOMER_SEGMENTS_SCHEMA: Final = T.StructType(
    [
        _f(S.CUSTOMER_ID, STR),
        _f(S.R_SCORE, INT),
        _f(S.F_SCORE, INT),
        _f(S.M_SCORE, INT),
        _f(S.RFM_CODE, STR),
        _f(S.RFM_SEGMENT, STR),
        _f(S.LIFECYCLE_STAGE, STR),
        _opt(CLUSTER_ID, INT),  # with clustering only
        _opt(S.PERSONA, STR),  # with clustering only
        _f(P_ALIVE, DBL),
        _f(EXPECTED_PURCHASES, DBL),
        _f(EXPECTED_AVG_VALUE, DBL),
        _f(S.CLV, DBL),
        _f(S.VALUE_TIER, STR),
        _f(S.CHURN_RISK, DBL),
        _f(CHURN_BAND, STR),
        _f(S.RECENCY_DAYS, INT),
        _f(S.FREQUENCY, LONG),
        _f(S.MONETARY, DBL),
        _f(S.AVG_ORDER_VALUE, DBL),
        _f(S.TENURE_DAYS, INT),
        _f(S.ACQUISITION_CHANNEL, STR),
    ]
)

# --- gold: aggregates -------------------------------------------------------------------------
RFM_GRID_SCHEMA: Final = T.StructType(
    [_f(S.R_SCORE, INT), _f(S.F_SCORE, INT), _f(S.CUSTOMERS, LONG), _f(S.REVENUE, DBL)]
)
SEGMENT_KPIS_SCHEMA: Final = T.StructType(
    [_f(S.SEGMENT_TYPE, STR), _f(S.SEGMENT, STR), _f(S.KPI, STR), _f(S.VALUE, DBL)]
)
COHORT_RETENTION_SCHEMA: Final = T.StructType(
    [
        _f(S.COHORT_MONTH, DATE),
        _f(S.DIMENSION, STR),
        _f(S.DIMENSION_VALUE, STR),
        _f(S.MONTHS_SINCE_FIRST, INT),
        _f(S.COHORT_SIZE, LONG),
        _f(S.ACTIVE_CUSTOMERS, LONG),
        _f(S.RETENTION_RATE, DBL),
        _f(S.REVENUE, DBL),
        _f(S.CUMULATIVE_REVENUE_PER_CUSTOMER, DBL),
    ]
)
LTV_CAC_SCHEMA: Final = T.StructType(
    [
        _f(S.LEVEL, STR),  # channel_month | channel | segment
        _f(S.SEGMENT_TYPE, STR),
        _f(S.SEGMENT, STR),
        _f(S.MONTH, DATE),
        _f(S.NEW_CUSTOMERS, LONG),
        _f(S.SPEND, DBL),
        _f(S.CAC, DBL),
        _f(S.CAC_STATUS, STR),
        _f(S.CAC_COVERAGE, DBL),
        _f(S.LTV_CUSTOMERS, LONG),
        _f(S.LTV_REALIZED, DBL),
        _f(S.LTV_PREDICTED, DBL),
        _f(S.LTV_TO_CAC, DBL),
        _f(S.LTV_PREDICTED_TO_CAC, DBL),
        _f(S.WINDOW_MONTHS, INT),
    ]
)
SEGMENT_TRANSITIONS_SCHEMA: Final = T.StructType(
    [_f(S.DIMENSION, STR), _f(S.FROM_SEGMENT, STR), _f(S.TO_SEGMENT, STR), _f(S.CUSTOMERS, LONG)]
)
DRIFT_SCHEMA: Final = T.StructType(
    [
        _f("dimension", STR),
        _f("kind", STR),  # categorical | numeric
        _f("bucket", STR),
        _f("previous_share", DBL),
        _f("current_share", DBL),
        _f("psi", DBL),
        _f("status", STR),
    ]
)
CLUSTER_PROFILES_SCHEMA: Final = T.StructType(
    [
        _f(CLUSTER_ID, LONG),
        _f(S.PERSONA, STR),
        _f(PERSONA_DESCRIPTION, STR),
        _f(PROFILE_SIZE, LONG),
        _f(PROFILE_SHARE, DBL),
        # per clustering feature: its mean, median_<feature> and z_<feature>: PATTERNS
    ]
)

# --- report and run records -------------------------------------------------------------------
REPORT_SUMMARY_SCHEMA: Final = T.StructType(
    [_f("metric", STR), _f("value", DBL), _f("unit", STR), _f("text", STR)]
)
RECOMMENDATIONS_SCHEMA: Final = T.StructType(
    [
        _f("rank", LONG),
        _f("play", STR),
        _f("play_name", STR),
        _f(S.SEGMENT, STR),
        _f(S.SEGMENT_TYPE, STR),
        _f(S.CUSTOMERS, LONG),
        _f("value_basis", STR),
        _f("horizon_months", LONG),
        _f("value_per_customer", DBL),
        _f("value_at_stake", DBL),
        _f("uplift_assumption", DBL),
        _f("gross_margin", DBL),
        _f("impact", DBL),
        _f("cost_per_contact", DBL),
        _f("fixed_cost", DBL),
        _f("play_cost", DBL),
        _f("net_value", DBL),
        _f("effort", LONG),
        _f("priority", DBL),
        _f("quadrant", STR),
        _f("baseline_metric", STR),
        _f("baseline_rate", DBL),
        _f("mde", DBL),
        _f("mde_relative", DBL),
        _f("target_rate", DBL),
        _f("alpha", DBL),
        _f("power", DBL),
        _f("sample_size_per_arm", LONG),
        _f("weeks_needed", DBL),
        _f("testable", BOOL),
        _f("test_flag", STR),
        _f("test_design", STR),
        _f("design_note", STR),
        _f("owner", STR),
        _f("action", STR),
        _f("rationale", STR),
    ]
)
QUARANTINE_SCHEMA: Final = T.StructType(
    [
        _f(S.Q_SOURCE_TABLE, STR),
        # the row's pseudonymous customer key when it has a usable one (null otherwise): erasure
        # reaches quarantined rows through it, as through every other table
        _f(S.CUSTOMER_ID, STR),
        _f(S.Q_RULE, STR),
        _f(S.Q_REASON, STR),
        _f(S.Q_RAW, STR),  # the rejected row as JSON (its columns depend on the source)
    ]
)
RUNS_SCHEMA: Final = T.StructType(
    [
        _f("command", STR),
        _f("status", STR),
        _f("error", STR),
        _f("started_at", TS),
        _f("ended_at", TS),
        _f("duration_s", DBL),
        _f("config_hash", STR),
        _f("code_version", STR),
        _f("engine", STR),
        _f("mlflow_run_id", STR),
        _f(
            "inputs",
            T.ArrayType(
                T.StructType(
                    [
                        _f("name", STR),
                        _f("location", STR),
                        _f("format", STR),
                        _f("version", LONG),
                        _f("rows_in", LONG),
                        _f("rows_clean", LONG),
                        _f("rows_quarantined", LONG),
                    ]
                )
            ),
        ),
        _f("outputs", T.ArrayType(T.StructType([_f("table", STR), _f("version", LONG)]))),
        _f("step_seconds", T.MapType(STR, DBL)),
        # what the run degraded to and why (a CLV fallback, a skipped model, a too-small section)
        _f("warnings", T.ArrayType(STR)),
        # what the job chose by the data's size (shuffle partitions, the churn fit's engine and
        # rows, the clustering sweep's fits, the final fit's starts): README, "What the job sizes"
        _opt("choices", T.MapType(STR, STR)),
    ]
)

# one row per data file of a file input (delta_version null), or one per Delta input (path null)
INPUT_MANIFEST_SCHEMA: Final = T.StructType(
    [
        _f("input", STR),
        _f("location", STR),
        _f("path", STR),  # relative to the input's location
        _f("size", LONG),
        _f("modification_time", TS),
        _f("delta_version", LONG),
    ]
)

# one row per customer key ``segspark erase`` removed: the SHA-256 (hex) of the key as the tables hold
# it (the pseudonym, or the source id where pseudonymization is off; never the key itself, so the
# key leaves every file once ``vacuum`` has run) and the erasure's time (UTC)
ERASURES_SCHEMA: Final = T.StructType([_f(S.ERASED_TAG, STR), _f(S.ERASED_AT, TS)])

SCHEMAS: dict[str, T.StructType] = {
    S.ORDERS: ORDERS_SCHEMA,
    S.CUSTOMER_DAYS: CUSTOMER_DAYS_SCHEMA,
    S.CUSTOMER_STATE: CUSTOMER_STATE_SCHEMA,
    S.CUSTOMER_MONTHS: CUSTOMER_MONTHS_SCHEMA,
    S.CLV_FIT: CLV_FIT_SCHEMA,
    S.CHURN_METRICS: CHURN_METRICS_SCHEMA,
    S.CLUSTERING_SWEEP: CLUSTERING_SWEEP_SCHEMA,
    S.CUSTOMER_SCORES: CUSTOMER_SCORES_SCHEMA,
    S.CLV_VALIDATION: CLV_VALIDATION_SCHEMA,
    S.CUSTOMER_FEATURES: CUSTOMER_FEATURES_SCHEMA,
    S.CUSTOMER_SEGMENTS: CUSTOMER_SEGMENTS_SCHEMA,
    S.RFM_GRID: RFM_GRID_SCHEMA,
    S.SEGMENT_KPIS: SEGMENT_KPIS_SCHEMA,
    S.COHORT_RETENTION: COHORT_RETENTION_SCHEMA,
    S.LTV_CAC: LTV_CAC_SCHEMA,
    S.SEGMENT_TRANSITIONS: SEGMENT_TRANSITIONS_SCHEMA,
    S.DRIFT: DRIFT_SCHEMA,
    S.CLUSTER_PROFILES: CLUSTER_PROFILES_SCHEMA,
    S.REPORT_SUMMARY: REPORT_SUMMARY_SCHEMA,
    S.RECOMMENDATIONS: RECOMMENDATIONS_SCHEMA,
    S.QUARANTINE: QUARANTINE_SCHEMA,
    S.RUNS: RUNS_SCHEMA,
    S.INPUT_MANIFEST: INPUT_MANIFEST_SCHEMA,
    S.ERASURES: ERASURES_SCHEMA,
}

# The clustering features a profile row may summarize: the numeric per-customer columns.
_PROFILE_FEATURES: Final = sorted(
    {
        f.name
        for schema in (CUSTOMER_FEATURES_SCHEMA, CUSTOMER_SCORES_SCHEMA)
        for f in schema.fields
        if isinstance(f.dataType, T.NumericType)
    }
)
_CHANNEL: Final = r"[A-Za-z0-9_]+"  # an entry of rfm.channels
_PROFILE_FEATURE: Final = (
    "(?:"
    + "|".join(
        [
            *map(re.escape, _PROFILE_FEATURES),
            re.escape(S.channel_column("")) + _CHANNEL,
            re.escape(S.channel_share_column("")) + _CHANNEL,
        ]
    )
    + ")"
)
PATTERNS: dict[str, tuple[ColumnPattern, ...]] = {
    S.CUSTOMER_STATE: (
        ColumnPattern(re.escape(S.channel_column("")) + _CHANNEL, LONG, "purchases per rfm.channels entry"),
    ),
    S.CUSTOMER_FEATURES: (
        ColumnPattern(re.escape(S.channel_column("")) + _CHANNEL, LONG, "purchases per rfm.channels entry"),
        ColumnPattern(
            re.escape(S.channel_share_column("")) + _CHANNEL, DBL, "purchase share per rfm.channels entry"
        ),
    ),
    S.CLUSTER_PROFILES: (
        ColumnPattern(
            f"(?:{re.escape(MEDIAN_PREFIX)}|{re.escape(Z_PREFIX)})?{_PROFILE_FEATURE}",
            DBL,
            "mean, median and centroid z-score of each clustering feature",
        ),
    ),
}

_INTEGERS: Final = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)


def _plain(type_: T.DataType) -> T.DataType:
    """``type_`` with every nullability flag and field metadata dropped (they are not checked)."""
    if isinstance(type_, T.StructType):
        return T.StructType([T.StructField(f.name, _plain(f.dataType), True) for f in type_.fields])
    if isinstance(type_, T.ArrayType):
        return T.ArrayType(_plain(type_.elementType), True)
    if isinstance(type_, T.MapType):
        return T.MapType(_plain(type_.keyType), _plain(type_.valueType), True)
    return type_


def _type_text(type_: T.DataType) -> str:
    return (
        type_.typeName()
        if not isinstance(type_, T.StructType | T.ArrayType | T.MapType)
        else type_.simpleString()
    )


def _widens(given: T.DataType, declared: T.DataType) -> bool:
    """A lossless cast the writer applies: a narrower integer, or an all-null (void) column."""
    if isinstance(given, T.NullType):
        return True
    kinds = [type(given), type(declared)]
    if all(k in _INTEGERS for k in kinds):
        return _INTEGERS.index(kinds[0]) < _INTEGERS.index(kinds[1])
    return False


def is_optional(field: T.StructField) -> bool:
    return bool((field.metadata or {}).get(OPTIONAL_KEY))


def conform_schema(name: str, schema: T.StructType) -> dict[str, T.DataType]:
    """Check ``schema`` against table ``name``'s declaration; returns the columns to cast to their
    declared type (tolerated narrower integers and void columns). Raises ``SchemaMismatch`` naming the
    table, each offending column and the rule it breaks."""
    declared = SCHEMAS.get(name)
    if declared is None:
        raise SchemaMismatch(f"table '{name}' has no declared schema: add it to segspark.tables.SCHEMAS")
    given = {f.name: f.dataType for f in schema.fields if f.name not in (S.RUN_ID, S.AS_OF_DATE)}
    problems: list[str] = []
    casts: dict[str, T.DataType] = {}

    def compare(column: str, type_: T.DataType, rule: str) -> None:
        actual = given[column]
        if _plain(actual) == _plain(type_):
            return
        if _widens(actual, type_):
            casts[column] = type_
            return
        problems.append(f"column '{column}' has type {_type_text(actual)}, {rule} {_type_text(type_)}")

    for field in declared.fields:
        if field.name in given:
            compare(field.name, field.dataType, "declared")
        elif not is_optional(field):
            problems.append(f"column '{field.name}' is missing")
    for column in given:
        if column in declared.names:
            continue
        pattern = next((p for p in PATTERNS.get(name, ()) if re.fullmatch(p.regex, column)), None)
        if pattern is None:
            problems.append(f"column '{column}' is not declared")
        else:
            compare(column, pattern.type_, f"declared by pattern {pattern.regex!r} as")
    if problems:
        raise SchemaMismatch(f"table '{name}': " + "; ".join(problems))
    return casts


def check_schema(name: str, schema: T.StructType) -> None:
    """Raise ``SchemaMismatch`` unless ``schema`` matches table ``name``'s declaration (module docstring)."""
    conform_schema(name, schema)
