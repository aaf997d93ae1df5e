"""Feature preparation for clustering: one MLlib ``Pipeline`` saved with the model.

Stages: a ``SQLTransformer`` that casts every feature to double and applies a signed ``log1p`` to
heavy-tailed money and count columns, an ``Imputer`` (median by default), a ``VectorAssembler``,
a ``StandardScaler`` (or ``RobustScaler``) and optional ``PCA``. Constant or all-null features are
dropped, with a warning, before the pipeline is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.ml import Pipeline
from pyspark.ml.feature import PCA, Imputer, RobustScaler, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segspark import schema as S
from segspark.config import ClusteringConfig
from segspark.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# Column names produced by the preparation pipeline.
FEATURES_COL = "features"  # the vector the clustering algorithms see
SCALED_COL = "_scaled"
ASSEMBLED_COL = "_assembled"
PREDICTION_COL = "prediction"
TRANSFORMED_PREFIX = "_t_"  # after cast + log1p
IMPUTED_PREFIX = "_i_"  # after imputation: what the profile z-scores are computed on

# The default feature set: RFM first, then behaviour, engagement and CLV columns when present.
RFM_FEATURES: tuple[str, ...] = (
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
    "return_rate",
)
OPTIONAL_FEATURES: tuple[str, ...] = (
    "mean_interpurchase_days",
    "category_breadth",
    "avg_basket_size",
    "sessions_90d",
    "active_days_90d",
    "conversion_rate_90d",
    "days_since_last_visit",
    "p_alive",
    "expected_purchases",
    "clv",
)
# Heavy-tailed money, count and duration columns that get a signed log1p by default.
LOG_FEATURES: frozenset[str] = frozenset(
    {
        "recency_days",
        "frequency",
        "monetary",
        "avg_order_value",
        "tenure_days",
        "mean_interpurchase_days",
        "avg_basket_size",
        "sessions_90d",
        "active_days_90d",
        "days_since_last_visit",
        "expected_purchases",
        "clv",
    }
)
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


@dataclass(frozen=True)
class FeatureCheck:
    """What one pass over the feature table found."""

    customers: int
    features: list[str]  # usable features, in order
    dropped: dict[str, str]  # feature -> reason


def transformed(name: str) -> str:
    return f"{TRANSFORMED_PREFIX}{name}"


def imputed(name: str) -> str:
    return f"{IMPUTED_PREFIX}{name}"


def candidate_features(df: DataFrame, cfg: ClusteringConfig) -> list[str]:
    """The configured feature list, or the default set restricted to the columns present."""
    if S.CUSTOMER_ID not in df.columns:
        raise InputError(f"customer_features: column '{S.CUSTOMER_ID}' is missing")
    types = dict(df.dtypes)
    if cfg.features:
        missing = [c for c in cfg.features if c not in types]
        if missing:
            raise ConfigError(
                f"clustering.features: {missing} not in customer_features (columns: {sorted(types)})"
            )
        chosen = list(dict.fromkeys(cfg.features))
    else:
        chosen = [c for c in (*RFM_FEATURES, *OPTIONAL_FEATURES) if c in types]
    numeric = {f.name for f in df.schema.fields if isinstance(f.dataType, _NUMERIC)}
    bad = [c for c in chosen if c not in numeric]
    if bad:
        raise InputError(f"customer_features: clustering features {bad} are not numeric")
    if not chosen:
        raise InputError(
            "customer_features: none of the default clustering features "
            f"{list(RFM_FEATURES)} is present; set clustering.features"
        )
    return chosen


def check_features(df: DataFrame, features: list[str]) -> FeatureCheck:
    """Count customers and drop features that are all null or constant (one aggregate pass)."""
    aggs = [F.count(F.lit(1)).alias("n")]
    for i, c in enumerate(features):
        x = F.col(c).cast("double")
        aggs += [F.count(x).alias(f"c{i}"), F.min(x).alias(f"lo{i}"), F.max(x).alias(f"hi{i}")]
    row = df.agg(*aggs).first()
    assert row is not None
    keep: list[str] = []
    dropped: dict[str, str] = {}
    for i, c in enumerate(features):
        if row[f"c{i}"] == 0:
            dropped[c] = "all null"
        elif row[f"lo{i}"] == row[f"hi{i}"]:
            dropped[c] = f"constant ({row[f'lo{i}']})"
        else:
            keep.append(c)
    for c, why in dropped.items():
        log.warning("clustering: feature '%s' dropped: %s", c, why)
    return FeatureCheck(customers=int(row["n"]), features=keep, dropped=dropped)


def _transform_sql(features: list[str], log_features: set[str]) -> str:
    exprs = []
    for c in features:
        x = f"CAST(`{c}` AS DOUBLE)"
        # signed log1p: net monetary can be negative after returns, and log1p(x < -1) is undefined
        e = f"SIGNUM({x}) * LOG1P(ABS({x}))" if c in log_features else x
        exprs.append(f"{e} AS `{transformed(c)}`")
    return f"SELECT *, {', '.join(exprs)} FROM __THIS__"


def build_prep_pipeline(features: list[str], cfg: ClusteringConfig) -> Pipeline:
    """The unfitted preparation pipeline for ``features``: log, impute, assemble, scale, optional PCA."""
    logged = (LOG_FEATURES | set(cfg.log_features)) & set(features)
    imputer = Imputer(
        inputCols=[transformed(c) for c in features],
        outputCols=[imputed(c) for c in features],
        strategy=cfg.impute_strategy,
    )
    assembler = VectorAssembler(inputCols=[imputed(c) for c in features], outputCol=ASSEMBLED_COL)
    scaled_out = SCALED_COL if cfg.pca_components else FEATURES_COL
    scaler: StandardScaler | RobustScaler
    if cfg.scaler == "robust":
        scaler = RobustScaler(inputCol=ASSEMBLED_COL, outputCol=scaled_out, withCentering=True)
    else:
        scaler = StandardScaler(inputCol=ASSEMBLED_COL, outputCol=scaled_out, withMean=True, withStd=True)
    sql = SQLTransformer(statement=_transform_sql(features, set(logged)))
    stages: list[Any] = [sql, imputer, assembler, scaler]
    if cfg.pca_components:
        if cfg.pca_components > len(features):
            raise ConfigError(
                f"clustering.pca_components={cfg.pca_components} exceeds the {len(features)} usable features"
            )
        stages.append(PCA(k=cfg.pca_components, inputCol=SCALED_COL, outputCol=FEATURES_COL))
    log.info("clustering features (%d): %s; log1p on %s", len(features), features, sorted(logged))
    return Pipeline(stages=stages)


def prepared_columns(features: list[str]) -> list[str]:
    """Columns kept after preparation: id, the model vector and the imputed features."""
    return [S.CUSTOMER_ID, FEATURES_COL, *[imputed(c) for c in features]]
