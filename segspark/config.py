"""Configuration: YAML files plus ``--set key=value`` overrides, validated by pydantic before Spark starts.

Every section is a model with ``extra="forbid"``, so a misspelt key is an error that names it.
The models here are the source of truth for types, defaults and allowed values; ``conf/default.yaml``
documents every knob with its default, and a test keeps the two equal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from segspark.errors import ConfigError


def _on_off_word(value: Any) -> Any:
    """YAML 1.1 reads the bare words on/off (and yes/no, true/false) as booleans, in a file and in
    ``--set`` alike; a setting documented with the words on/off takes the booleans back as those words."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


def _off_word(value: Any) -> Any:
    """As :func:`_on_off_word` for a setting whose only switch word is ``off`` (a YAML false);
    a YAML true names no value of it and is refused with the allowed ones."""
    return "off" if value is False else value


Severity = Annotated[Literal["quarantine", "fail", "off"], BeforeValidator(_off_word)]
# auto | on | off settings (report.pdf)
Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off_word)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputTable(Section):
    """One input table: a path or a catalog table, its format, and the column mapping."""

    path: str | None = None
    table: str | None = None
    format: Literal["delta", "parquet", "csv"] = "delta"
    version: int | None = Field(default=None, ge=0)
    columns: dict[str, str] = Field(default_factory=dict)  # canonical name -> source name
    options: dict[str, str] = Field(default_factory=dict)  # reader options, e.g. CSV header/sep

    @property
    def configured(self) -> bool:
        return bool(self.path or self.table)

    @property
    def location(self) -> str:
        return self.table or self.path or "<not configured>"


class InputConfig(Section):
    transactions: InputTable = Field(default_factory=InputTable)
    customers: InputTable = Field(default_factory=InputTable)
    events: InputTable = Field(default_factory=InputTable)
    marketing_spend: InputTable = Field(default_factory=InputTable)


class OutputConfig(Section):
    path: str = "./segspark-output"
    catalog: str | None = None
    schema_: str | None = Field(default=None, alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# delta-rs storage options that would hold a credential: credentials come from the environment
_SECRET_OPTION_WORDS = ("SECRET", "ACCESS_KEY", "TOKEN", "PASSWORD")


class S3Config(Section):
    """An S3 object store for ``s3a://`` locations (``segspark.io.storage``). No credentials here:
    they come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or an instance role."""

    endpoint: str | None = None  # null: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS itself
    region: str | None = None  # null: $AWS_REGION or $AWS_DEFAULT_REGION
    path_style: bool | None = None  # bucket in the path, not the host name; null: when an endpoint is set
    # what keeps delta-rs's concurrent commits safe: conditional-put (If-None-Match), dynamodb (a
    # lock table, delta-rs's DELTA_DYNAMO_TABLE_NAME), single-writer (no protection: one writer only)
    commit: Literal["conditional-put", "dynamodb", "single-writer"] = "conditional-put"
    delta_rs_options: dict[str, str] = Field(default_factory=dict)  # more delta-rs storage options

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^/\s]+/?", v):
            raise ValueError(f"{v!r} is not an endpoint URL such as https://s3.example.com:9000")
        return v

    @field_validator("delta_rs_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if any(word in key.upper() for word in _SECRET_OPTION_WORDS):
                raise ValueError(
                    f"'{key}' looks like a credential: credentials come from the environment "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from configuration files"
                )
        return v


class LakehouseConfig(Section):
    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    vacuum_retention_hours: int = Field(default=168, ge=0)
    # vacuum compacts a table only when one of its partitions holds at least this many data files
    # (Delta's own auto-compaction threshold, spark.databricks.delta.autoCompact.minNumFiles)
    compact_min_files: int = Field(default=50, ge=1)
    s3: S3Config = Field(default_factory=S3Config)
    # Delta's change data feed on every output table (delta.enableChangeDataFeed): raises the tables'
    # writer protocol (README, "Table engines"); false leaves it off, and turns it off where it was on
    change_data_feed: bool = False


class SparkConfig(Section):
    """Where Spark runs; ``auto`` sizes apply to a local session the job starts (see ``segspark.session``)."""

    master: str = "local[*]"
    remote: str | None = None
    app_name: str = "segspark"
    ui: bool = False
    # auto: 4 per local core, at least 8; an integer is used as given wherever the job builds the session
    shuffle_partitions: int | Literal["auto"] = "auto"
    # auto: 60% of the machine's (or container's) memory, 1g..31g; or a JVM size such as 8g or 1536m
    driver_memory: str = "auto"
    # the JIT of a local session the job starts: quick = HotSpot's client compiler only (short runs),
    # full = the JVM's default tiers; auto: quick when the local inputs are small (segspark.session)
    jit: Literal["auto", "quick", "full"] = "auto"
    conf: dict[str, str] = Field(default_factory=dict)  # any Spark setting; wins over the two sizes above

    @field_validator("shuffle_partitions", mode="before")
    @classmethod
    def _partitions(cls, value: Any) -> Any:
        # null meant "let the job choose" before auto existed: older config files keep working
        if value is None or value == "auto":
            return "auto"
        try:
            number = int(value) if not isinstance(value, bool) else 0
        except (TypeError, ValueError):
            number = 0
        if number < 1 or str(number) != str(value).strip():
            raise ValueError(f"{value!r} is neither auto nor a number of partitions >= 1")
        return number

    @field_validator("driver_memory", mode="before")
    @classmethod
    def _jvm_size(cls, value: Any) -> Any:
        text = "auto" if value is None else str(value).strip().lower()
        if not re.fullmatch(r"auto|[1-9][0-9]*(b|k|kb|m|mb|g|gb|t|tb)?", text):
            raise ValueError(f"{value!r} is neither auto nor a JVM size such as 8g or 1536m")
        return text


class TrackingConfig(Section):
    uri: str | None = None
    experiment: str = "segspark"
    registered_model: str = "segspark-segmentation"
    enabled: bool = True


class CurrencyConfig(Section):
    base: str = "USD"
    rates: dict[str, float] = Field(default_factory=dict)  # currency -> units of base per unit


# Data-quality rule ids (stable: they name rows in the quarantine table). Listed in precedence
# order: a row breaking several rules is quarantined once, under the first one here.
QUALITY_RULE_IDS: tuple[str, ...] = (
    "missing_customer_id",
    "erased_customer",
    "missing_order_id",
    "missing_channel",
    "bad_timestamp",
    "future_timestamp",
    "too_early_timestamp",
    "bad_amount",
    "unknown_currency",
    "unknown_event_type",
    "malformed_customer",
    "order_id_conflict",
    "customer_id_conflict",
    "duplicate_line",
    "amount_outlier",
)
# The rows of an erased customer dated up to the erasure (``segspark erase``): always quarantined,
# without their values or key; not a data-quality finding (no share limit, no severity setting).
ERASED_RULE = "erased_customer"
# Rules that keep unusable rows out of the clean tables; they may be 'fail' but not 'off'.
STRUCTURAL_RULE_IDS: frozenset[str] = frozenset(
    {
        "missing_customer_id",
        "missing_order_id",
        "missing_channel",
        "bad_timestamp",
        "bad_amount",
        "unknown_currency",
        "malformed_customer",
        "customer_id_conflict",
    }
)


class QualityConfig(Section):
    rules: dict[str, Severity] = Field(default_factory=dict)  # rule id -> severity override
    earliest_date: dt.date = dt.date(2000, 1, 1)
    future_tolerance_hours: float = Field(default=24.0, ge=0)
    outlier_quantile: float = Field(default=0.999, gt=0.5, lt=1.0)
    outlier_multiple: float = Field(default=20.0, gt=1.0)
    outlier_abs_cap: float | None = Field(default=None, gt=0)
    relative_error: float = Field(default=0.001, gt=0, lt=0.5)
    currency: CurrencyConfig = Field(default_factory=CurrencyConfig)
    # extra timestamp patterns tried before ISO-8601 text, e.g. ['dd/MM/yyyy HH:mm']
    timestamp_formats: list[str] = Field(default_factory=list)
    min_age: int = Field(default=0, ge=0)  # CRM ages outside [min_age, max_age] are malformed
    max_age: int = Field(default=120, ge=1)
    # a run whose quarantined share of any input exceeds this stops with exit 3 (after the
    # quarantine table is written, for diagnosis): an absurd share means a broken feed or mapping
    max_quarantine_share: float = Field(default=0.2, ge=0, le=1)

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, v: dict[str, str]) -> dict[str, str]:
        for rule, severity in v.items():
            if rule not in QUALITY_RULE_IDS:
                raise ValueError(f"unknown quality rule '{rule}'; known rules: {', '.join(QUALITY_RULE_IDS)}")
            if rule == ERASED_RULE:
                raise ValueError(
                    f"quality rule '{rule}' is not configurable: the rows of a customer 'segspark erase' "
                    "removed, dated up to the erasure, are always quarantined without their values"
                )
            if severity == "off" and rule in STRUCTURAL_RULE_IDS:
                raise ValueError(f"quality rule '{rule}' keeps unusable rows out and cannot be 'off'")
        return v

    @model_validator(mode="after")
    def _age_range(self) -> QualityConfig:
        if self.max_age <= self.min_age:
            raise ValueError(f"max_age ({self.max_age}) must be > min_age ({self.min_age})")
        return self


class PrivacyConfig(Section):
    pseudonymize: bool = True
    key_env: str = "SEGSPARK_PSEUDO_KEY"
    secret_scope: str | None = None
    secret_key: str | None = None
    pii_columns: list[str] = Field(default_factory=lambda: ["email", "name", "phone", "address"])
    age_bands: list[int] = Field(default_factory=lambda: [18, 25, 35, 45, 55, 65])


class RfmSegmentRule(Section):
    name: str
    r: tuple[int, int]  # inclusive score range
    fm: tuple[int, int]  # inclusive range of the combined F/M score


def _rules(*rows: tuple[str, tuple[int, int], tuple[int, int]]) -> tuple[RfmSegmentRule, ...]:
    return tuple(RfmSegmentRule(name=n, r=r, fm=fm) for n, r, fm in rows)


# The 11 standard RFM segments as a partition of the (R, FM) grid, FM = round-half-up((F + M) / 2).
# Rules are tried in order and the first match wins; these default tables do not overlap (a partition).
DEFAULT_RFM_SEGMENTS: dict[int, tuple[RfmSegmentRule, ...]] = {
    5: _rules(
        ("Champions", (5, 5), (4, 5)),
        ("Champions", (4, 4), (5, 5)),
        ("Loyal", (4, 4), (4, 4)),
        ("Loyal", (3, 3), (4, 5)),
        ("Potential Loyalist", (4, 5), (2, 3)),
        ("New Customers", (5, 5), (1, 1)),
        ("Promising", (4, 4), (1, 1)),
        ("Need Attention", (3, 3), (3, 3)),
        ("About to Sleep", (3, 3), (1, 2)),
        ("Cannot Lose Them", (1, 1), (4, 5)),
        ("At Risk", (2, 2), (3, 5)),
        ("At Risk", (1, 1), (3, 3)),
        ("Hibernating", (2, 2), (1, 2)),
        ("Lost", (1, 1), (1, 2)),
    ),
    4: _rules(
        ("Champions", (4, 4), (3, 4)),
        ("Potential Loyalist", (4, 4), (2, 2)),
        ("New Customers", (4, 4), (1, 1)),
        ("Loyal", (3, 3), (3, 4)),
        ("Need Attention", (3, 3), (2, 2)),
        ("Promising", (3, 3), (1, 1)),
        ("Cannot Lose Them", (1, 2), (4, 4)),
        ("At Risk", (1, 2), (3, 3)),
        ("About to Sleep", (2, 2), (1, 2)),
        ("Hibernating", (1, 1), (2, 2)),
        ("Lost", (1, 1), (1, 1)),
    ),
}


class RfmConfig(Section):
    bins: Literal[4, 5] = 5
    relative_error: float = Field(default=0.001, gt=0, lt=0.5)
    segments: list[RfmSegmentRule] = Field(default_factory=list)  # empty: the 11 standard segments
    # channels with their own orders_<channel> feature column; other or missing channels: orders_other
    channels: list[str] = Field(default_factory=lambda: ["web", "app", "store"])

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, v: list[str]) -> list[str]:
        for ch in v:
            if not ch or not all(c.isalnum() or c == "_" for c in ch) or ch != ch.lower() or ch == "other":
                raise ValueError(f"channel {ch!r}: use lower-case letters, digits and '_' (not 'other')")
        if len(set(v)) != len(v):
            raise ValueError("channels must not repeat")
        return v

    @model_validator(mode="after")
    def _segments_cover_grid(self) -> RfmConfig:
        for rule in self.segments:
            for label, (lo, hi) in (("r", rule.r), ("fm", rule.fm)):
                if not 1 <= lo <= hi <= self.bins:
                    raise ValueError(
                        f"segment '{rule.name}': {label} range ({lo}, {hi}) must lie in 1..{self.bins}"
                    )
        rules = self.segment_rules()
        for r in range(1, self.bins + 1):
            for fm in range(1, self.bins + 1):
                if not any(x.r[0] <= r <= x.r[1] and x.fm[0] <= fm <= x.fm[1] for x in rules):
                    raise ValueError(f"segments leave the cell R={r}, FM={fm} without a segment")
        return self

    def segment_rules(self) -> tuple[RfmSegmentRule, ...]:
        """The configured segment rules, or the 11 standard segments for ``bins``."""
        return tuple(self.segments) if self.segments else DEFAULT_RFM_SEGMENTS[self.bins]


class LifecycleConfig(Section):
    new_days: int = Field(default=60, ge=1)
    at_risk_gap_factor: float = Field(default=2.0, gt=0)
    at_risk_days: int = Field(default=120, ge=1)
    churned_days: int = Field(default=365, ge=1)
    reactivation_gap_days: int = Field(default=180, ge=1)
    # the personal at-risk rule (recency > at_risk_gap_factor x own mean gap) never fires below this
    at_risk_min_days: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _stage_order(self) -> LifecycleConfig:
        if not self.at_risk_min_days <= self.at_risk_days < self.churned_days:
            raise ValueError(
                f"need at_risk_min_days ({self.at_risk_min_days}) <= at_risk_days ({self.at_risk_days})"
                f" < churned_days ({self.churned_days})"
            )
        return self


class KpisConfig(Section):
    """Segment KPIs, cohorts and LTV:CAC."""

    ltv_window_months: int = Field(default=12, ge=1)  # realized LTV: net revenue in the first N months


class ClusteringConfig(Section):
    enabled: bool = True
    algorithms: list[Literal["kmeans", "bisecting_kmeans", "gmm"]] = Field(
        default_factory=lambda: ["kmeans", "bisecting_kmeans"]  # type: ignore[arg-type]
    )
    algorithm: Literal["kmeans", "bisecting_kmeans", "gmm", "dbscan", "hdbscan"] | None = None
    k_min: int = Field(default=2, ge=2)
    k_max: int = Field(default=10, ge=2)
    k: int | None = Field(default=None, ge=1)
    features: list[str] = Field(default_factory=list)  # empty: the default feature set
    log_features: list[str] = Field(default_factory=list)
    scaler: Literal["standard", "robust"] = "standard"
    pca_components: int | None = Field(default=None, ge=1)
    sample_size: int = Field(default=50_000, ge=100)
    silhouette_sample: int = Field(default=20_000, ge=100)
    min_cluster_share: float = Field(default=0.02, ge=0, lt=0.5)
    min_stability: float = Field(default=0.6, ge=0, le=1)
    seed: int = 42
    persona_names: dict[str, str] = Field(default_factory=dict)
    # --- added by the clustering stage ---
    # local: the sample on the driver; spark: MLlib on the sample
    sweep_engine: Literal["local", "spark"] = "local"
    final_fit: Literal["all", "sample"] = "sample"  # fit the chosen model on the sample or on everyone
    max_iter: int = Field(default=20, ge=1)
    tol: float = Field(default=1e-4, gt=0)
    impute_strategy: Literal["median", "mean"] = "median"
    stability: bool = True  # measure ARI between fits on two seeded half-samples
    knee_window: int = Field(default=1, ge=0)  # choose the best silhouette within this many k of the knee
    density_sample: int = Field(default=20_000, ge=50)
    density_eps: float | None = Field(default=None, gt=0)  # None: a quantile of the k-distance curve
    density_eps_quantile: float = Field(default=0.9, gt=0, lt=1)
    density_min_samples: int = Field(default=10, ge=2)
    density_strata: str | None = None  # column to stratify the density sample on, e.g. rfm_segment
    persona_traits: int = Field(default=2, ge=1, le=4)
    persona_min_z: float = Field(default=0.25, ge=0)
    persona_match_max_distance: float = Field(default=1.5, gt=0)  # z-space distance to inherit a name
    model_alias: str = "champion"

    @model_validator(mode="after")
    def _k_range(self) -> ClusteringConfig:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class PurchaseConfig(Section):
    """The one purchase definition every stage uses (RFM, behaviour, CLV, churn, cohorts, LTV:CAC)."""

    # an order is a purchase when its net amount (sum of its lines, returns negative) is greater
    # than this: with 0, free orders and pure returns are not purchases
    min_net_amount: float = 0.0


class ClvConfig(Section):
    enabled: bool = True
    time_unit: Literal["day", "week"] = "week"
    calibration_end: dt.date | None = None
    holdout_end: dt.date | None = None
    # auto: the valid model closest to the holdout on every repeat-purchase band (segspark.clv.fit)
    model: Literal["bgnbd", "pareto_nbd", "mbgnbd", "mbgcnbd", "auto"] = "auto"
    # with model auto: also try one model per repeat band, kept when closer to the holdout
    # (segspark.clv.bands); off by default: README's CLV section says what it costs on the demo
    per_band: bool = False
    horizon_months: int = Field(default=12, ge=1)
    monthly_discount_rate: float = Field(default=0.01, ge=0, lt=1)
    penalizer: float = Field(default=0.0, ge=0)
    value_tier_top_share: float = Field(default=0.2, gt=0, lt=1)
    # calibration end when calibration_end is null: as_of_date minus this many days
    holdout_days: int = Field(default=91, ge=1)
    days_per_month: float = Field(default=30.4375, gt=0)  # month length for CLV discounting
    # Gamma-Gamma statistics are grouped on a log-spend grid of this relative width (0: exact values)
    spend_grid_resolution: float = Field(default=1e-4, ge=0, lt=0.1)
    spend_corr_warn: float = Field(default=0.3, gt=0, le=1)  # |corr(frequency, spend)| that warns
    min_repeat_buyers: int = Field(default=10, ge=1)  # fewer: no Gamma-Gamma, mean spend instead
    # the spend model (segspark.clv.spend): auto = Gamma-Gamma per frequency stratum when the
    # independence check fails (spend_corr_warn), else Gamma-Gamma
    spend_model: Literal["auto", "gamma_gamma", "gamma_gamma_by_frequency"] = "auto"
    spend_min_stratum_buyers: int = Field(default=200, ge=2)  # fewer: the stratum joins its neighbour
    # a fit is valid only when every parameter is interior, its relative standard errors are finite
    # and below max_relative_se, and its holdout total error is within max_holdout_error; otherwise
    # ``auto`` tries the next model and, when none is valid, CLV falls back to the historical spend rate
    max_relative_se: float = Field(default=10.0, gt=0)
    max_holdout_error: float = Field(default=0.25, gt=0)


class ChurnConfig(Section):
    enabled: bool = True
    horizon_days: int = Field(default=90, ge=1)
    model: Literal["gbt", "logistic"] = "gbt"
    # local: the fits on the driver over the bounded training sample (scikit-learn), the scoring in
    # Spark as one column expression; spark: Spark ML fits (each boosting round several Spark jobs)
    engine: Literal["local", "spark"] = "local"
    seed: int = 42
    max_iter: int = Field(default=30, ge=1)  # boosting rounds (gbt) or iterations (logistic)
    max_depth: int = Field(default=4, ge=1, le=12)  # gbt tree depth
    reg_param: float = Field(default=0.01, ge=0)  # logistic L2 regularization
    refit_on_latest: bool = True  # score with a model refitted on the most recent labelled window
    # the fits train on a seeded sample of about this many customers of their window (scoring covers
    # every customer): Spark ML's boosting costs grow with the rows, the model's quality hardly does
    max_train_rows: int = Field(default=200_000, ge=1_000)
    # the metrics are computed on the driver over a seeded sample of about this many test customers
    max_eval_rows: int = Field(default=200_000, ge=1_000)
    medium_risk_threshold: float = Field(default=0.3, gt=0, lt=1)  # churn_band: low below, medium from here
    high_risk_threshold: float = Field(default=0.6, gt=0, lt=1)  # churn_band: high from here

    @model_validator(mode="after")
    def _band_order(self) -> ChurnConfig:
        if self.high_risk_threshold <= self.medium_risk_threshold:
            raise ValueError(
                f"high_risk_threshold ({self.high_risk_threshold}) must be above medium_risk_threshold "
                f"({self.medium_risk_threshold})"
            )
        return self


class AbTestConfig(Section):
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    power: float = Field(default=0.8, gt=0.5, lt=1)
    mde_relative: float = Field(default=0.10, gt=0)
    max_weeks: int = Field(default=8, ge=1)
    # share of a segment that can be enrolled in a test per week (contact cadence); weeks needed =
    # 2 x sample size per arm / (segment customers x weekly_reach)
    weekly_reach: float = Field(default=0.25, gt=0, le=1)
    # when the planned test cannot detect the effect, the alternatives tried (report.recommend):
    # the longest test the business accepts (weeks), the holdout kept back in a rollout, and the
    # largest relative lift such a holdout may need to detect for the rollout to count as measured
    long_test_weeks: int = Field(default=26, ge=1)
    holdout_share: float = Field(default=0.10, gt=0, lt=0.5)
    max_holdout_lift: float = Field(default=0.25, gt=0)


# Play ids of the recommendations (report.uplift / report.effort / report.owners keys).
REPORT_PLAYS: tuple[str, ...] = ("retention", "win_back", "cross_sell", "onboarding", "first_purchase", "vip")


def _check_plays(v: dict[str, Any], what: str, low: float, high: float | None = None) -> dict[str, Any]:
    """Keys must be known plays and values lie in [low, high]; the error names the play and the range."""
    for play, value in v.items():
        if play not in REPORT_PLAYS:
            raise ValueError(f"unknown play '{play}'; known plays: {', '.join(REPORT_PLAYS)}")
        if value < low or (high is not None and value > high):
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"play '{play}': {what} {value} must be {bound}")
    return v


class PlayValueConfig(Section):
    """How a play is valued (report.recommend): expected incremental gross margin over the CLV
    horizon (clv.horizon_months) minus the play's cost; plays are ranked by that net value."""

    gross_margin: float = Field(default=0.4, gt=0, le=1)  # gross margin as a share of net revenue
    # play -> cost per customer contacted (offer, postage, staff time); preset defaults fill the gaps
    cost_per_contact: dict[str, float] = Field(default_factory=dict)
    # play -> fixed cost of running the play once (set-up, creative, tooling); preset defaults fill the gaps
    fixed_cost: dict[str, float] = Field(default_factory=dict)
    # a segment with at least this share of net revenue is material: the play library must cover it
    material_revenue_share: float = Field(default=0.02, ge=0, le=1)

    @field_validator("cost_per_contact", "fixed_cost")
    @classmethod
    def _costs(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_plays(v, "cost", 0.0)


class Milestone(Section):
    """One step of the implementation plan: weeks counted from the plan start."""

    name: str
    owner: str
    start_week: int = Field(ge=0)
    weeks: int = Field(default=1, ge=1)


class GovernanceConfig(Section):
    """The decisions a segmentation programme records (shown in the report's Governance section;
    an unset item is shown as a decision still open, not hidden)."""

    legal_basis: str | None = None  # e.g. "legitimate interests (GDPR Art. 6(1)(f)) for analytics"
    # CRM column (true/false) that must be true for a customer to enter an activation list
    consent_column: str | None = None
    retention_period: str | None = None  # how long segment tables and reports are kept, e.g. "13 months"
    owner_role: str | None = None  # accountable for the segmentation, e.g. "Head of CRM"
    reviewer_role: str | None = None  # reviews it, e.g. "Data protection officer"
    review_every_months: int = Field(default=6, ge=1, le=36)
    last_review: dt.date | None = None  # the next review is due review_every_months after it


class ReportConfig(Section):
    enabled: bool = True
    preset: Literal["retail", "saas"] = "retail"
    title: str = "Customer segmentation strategy"
    currency_symbol: str = "$"
    min_segment_size: int = Field(default=50, ge=1)
    ab_test: AbTestConfig = Field(default_factory=AbTestConfig)
    uplift: dict[str, float] = Field(default_factory=dict)  # play -> assumed relative uplift
    effort: dict[str, int] = Field(default_factory=dict)  # play -> effort 1 (low) .. 5 (high)
    owners: dict[str, str] = Field(default_factory=dict)
    value: PlayValueConfig = Field(default_factory=PlayValueConfig)  # play value: margin, costs
    # --- added by the report stage ---
    top_plays: int = Field(default=5, ge=1)  # plays with an A/B test plan in the report
    milestones: list[Milestone] = Field(default_factory=list)  # empty: the preset's plan
    start_date: dt.date | None = None  # implementation plan start; null: as_of_date + 7 days
    scoring_cadence: str = "weekly"  # how often customers are re-scored with the registered model
    refit_cadence: str = "monthly"  # how often the segmentation and models are refitted
    max_cohorts: int = Field(default=24, ge=1)  # newest cohorts drawn in the retention heatmap
    figure_dpi: int = Field(default=110, ge=50, le=300)
    ltv_cac_target: float = Field(default=3.0, gt=0)  # healthy LTV:CAC drawn as the chart's target line
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    # report.pdf next to the HTML, printed by headless Chromium: auto = when one is found
    pdf: Switch = "auto"

    @field_validator("uplift", "effort")
    @classmethod
    def _known_plays(cls, v: dict[str, Any]) -> dict[str, Any]:
        for play in v:
            if play not in REPORT_PLAYS:
                raise ValueError(f"unknown play '{play}'; known plays: {', '.join(REPORT_PLAYS)}")
        return v

    @field_validator("uplift")
    @classmethod
    def _uplift_range(cls, v: dict[str, float]) -> dict[str, float]:
        for play, value in v.items():
            if not 0 < value <= 1:
                raise ValueError(f"play '{play}': uplift {value} must be a share in (0, 1]")
        return v

    @field_validator("effort")
    @classmethod
    def _effort_range(cls, v: dict[str, int]) -> dict[str, int]:
        for play, value in v.items():
            if not 1 <= value <= 5:
                raise ValueError(f"play '{play}': effort {value} must lie in 1 (low) .. 5 (high)")
        return v


class Settings(Section):
    """The whole validated configuration."""

    as_of_date: dt.date | None = None
    run_id: str | None = None
    refresh: Literal["auto", "incremental", "full"] = "auto"  # segspark.refresh: what a run recomputes
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    lakehouse: LakehouseConfig = Field(default_factory=LakehouseConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    purchase: PurchaseConfig = Field(default_factory=PurchaseConfig)
    rfm: RfmConfig = Field(default_factory=RfmConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    kpis: KpisConfig = Field(default_factory=KpisConfig)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    clv: ClvConfig = Field(default_factory=ClvConfig)
    churn: ChurnConfig = Field(default_factory=ChurnConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("run_id")
    @classmethod
    def _run_id_chars(cls, v: str | None) -> str | None:
        if v is not None and not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("run_id may hold only letters, digits, '-' and '_'")
        return v

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        if "://" in self.output.path:
            # MLflow's SQLite store is a local file: it cannot live on an object store
            raise ConfigError(
                f"output.path {self.output.path} is not a local folder, so the MLflow store cannot be "
                "kept beside the tables: set tracking.uri (a tracking server, databricks, or "
                "sqlite:////local/folder/mlflow.db) or tracking.enabled: false"
            )
        return f"sqlite:///{Path(self.output.path).resolve() / 'mlflow.db'}"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def config_hash(self) -> str:
        """A stable hash of the effective configuration (run id excluded)."""
        d = self.as_dict()
        d.pop("run_id", None), d.pop("refresh", None)  # refresh: how a run computes, not what
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: a date stays text until pydantic validates it, so a bad date
    (``2025-13-45``) is an error that names its key rather than a ``ValueError`` from the YAML parser."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers, booleans, null and lists work."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set clv.model=pareto_nbd")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = value.isoformat()
    return parts, value


def _apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: '{part}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _key_path(loc: tuple[int | str, ...]) -> str:
    """The dotted configuration key of a pydantic error location, without the tags pydantic adds for
    the arms of a union (``spark.shuffle_partitions.int`` is the key ``spark.shuffle_partitions``)."""
    parts: list[str] = []
    node: Any = Settings
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            name = str(part)
            field = node.model_fields.get(name) or next(
                (f for f in node.model_fields.values() if f.alias == name), None
            )
            if field is None:
                break
            parts.append(name)
            node = _section_type(field.annotation)
        elif node in (dict, list):
            parts.append(str(part))
            node = None
        else:
            break
    return ".".join(parts) or "<root>"


def _section_type(annotation: Any) -> Any:
    """The model class, ``dict`` or ``list`` an annotation holds (through ``X | None``); else None."""
    origin = get_origin(annotation)
    if origin in (dict, list, tuple):
        return dict if origin is dict else list
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    for arm in get_args(annotation):
        found = _section_type(arm)
        if found is not None:
            return found
    return None


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = (
        ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden"
        else _key_path(tuple(first["loc"]))
    )
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        parent_loc = first["loc"][:-1]
        model: type[BaseModel] = Settings
        for part in parent_loc:
            field = model.model_fields.get(str(part))
            ann = getattr(field, "annotation", None) if field else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
            else:
                break
        allowed = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
        return f"unknown configuration key '{key}'; allowed keys here: {allowed}"
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"invalid value for '{key}': {shown}: {first['msg']}{more}"


def load_settings(
    conf_files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
) -> Settings:
    """Merge ``conf_files`` (later wins) and ``overrides`` over the defaults; validate."""
    data: dict[str, Any] = {}
    for path in conf_files or []:
        data = _deep_merge(data, _read_yaml(Path(path)))
    for item in overrides or []:
        parts, value = parse_override(item)
        _apply_override(data, parts, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
