"""Configuration: YAML files plus ``--set key=value`` overrides, validated by pydantic before Spark starts.

Every section is a model with ``extra="forbid"``, so a misspelt key is an error that names it.
The models here are the source of truth for types, defaults and allowed values; ``conf/default.yaml``
documents every knob with its default, and a test keeps the two equal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segspark.errors import ConfigError

Severity = Literal["quarantine", "fail", "off"]


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


class LakehouseConfig(Section):
    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    vacuum_retention_hours: int = Field(default=168, ge=0)


class SparkConfig(Section):
    master: str = "local[*]"
    remote: str | None = None
    app_name: str = "segspark"
    ui: bool = False
    shuffle_partitions: int | None = Field(default=None, ge=1)
    driver_memory: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)


class TrackingConfig(Section):
    uri: str | None = None
    experiment: str = "segspark"
    registered_model: str = "segspark-segmentation"
    enabled: bool = True


class CurrencyConfig(Section):
    base: str = "USD"
    rates: dict[str, float] = Field(default_factory=dict)  # currency -> units of base per unit


class QualityConfig(Section):
    rules: dict[str, Severity] = Field(default_factory=dict)  # rule id -> severity override
    earliest_date: dt.date = dt.date(2000, 1, 1)
    future_tolerance_hours: float = Field(default=24.0, ge=0)
    outlier_quantile: float = Field(default=0.999, gt=0.5, lt=1.0)
    outlier_multiple: float = Field(default=20.0, gt=1.0)
    outlier_abs_cap: float | None = Field(default=None, gt=0)
    relative_error: float = Field(default=0.001, gt=0, lt=0.5)
    currency: CurrencyConfig = Field(default_factory=CurrencyConfig)


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


class RfmConfig(Section):
    bins: Literal[4, 5] = 5
    relative_error: float = Field(default=0.001, gt=0, lt=0.5)
    segments: list[RfmSegmentRule] = Field(default_factory=list)  # empty: the 11 standard segments


class LifecycleConfig(Section):
    new_days: int = Field(default=60, ge=1)
    at_risk_gap_factor: float = Field(default=2.0, gt=0)
    at_risk_days: int = Field(default=120, ge=1)
    churned_days: int = Field(default=365, ge=1)
    reactivation_gap_days: int = Field(default=180, ge=1)


class ClusteringConfig(Section):
    enabled: bool = True
    algorithms: list[Literal["kmeans", "bisecting_kmeans", "gmm"]] = Field(
        default_factory=lambda: ["kmeans", "bisecting_kmeans"]
    )
    algorithm: Literal["kmeans", "bisecting_kmeans", "gmm", "dbscan", "hdbscan"] | None = None
    k_min: int = Field(default=2, ge=2)
    k_max: int = Field(default=10, ge=2)
    k: int | None = Field(default=None, ge=1)
    features: list[str] = Field(default_factory=list)  # empty: the default feature set
    log_features: list[str] = Field(default_factory=list)
    scaler: Literal["standard", "robust"] = "standard"
    pca_components: int | None = Field(default=None, ge=1)
    sample_size: int = Field(default=200_000, ge=100)
    silhouette_sample: int = Field(default=20_000, ge=100)
    min_cluster_share: float = Field(default=0.02, ge=0, lt=0.5)
    min_stability: float = Field(default=0.6, ge=0, le=1)
    seed: int = 42
    persona_names: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _k_range(self) -> ClusteringConfig:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class ClvConfig(Section):
    enabled: bool = True
    time_unit: Literal["day", "week"] = "week"
    calibration_end: dt.date | None = None
    holdout_end: dt.date | None = None
    model: Literal["bgnbd", "pareto_nbd", "mbgnbd", "auto"] = "bgnbd"
    horizon_months: int = Field(default=12, ge=1)
    monthly_discount_rate: float = Field(default=0.01, ge=0, lt=1)
    penalizer: float = Field(default=0.0, ge=0)
    value_tier_top_share: float = Field(default=0.2, gt=0, lt=1)


class ChurnConfig(Section):
    enabled: bool = True
    horizon_days: int = Field(default=90, ge=1)
    model: Literal["gbt", "logistic"] = "gbt"
    seed: int = 42


class AbTestConfig(Section):
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    power: float = Field(default=0.8, gt=0.5, lt=1)
    mde_relative: float = Field(default=0.10, gt=0)
    max_weeks: int = Field(default=8, ge=1)


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


class Settings(Section):
    """The whole validated configuration."""

    as_of_date: dt.date | None = None
    run_id: str | None = None
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    lakehouse: LakehouseConfig = Field(default_factory=LakehouseConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    rfm: RfmConfig = Field(default_factory=RfmConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
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
        return f"sqlite:///{Path(self.output.path).resolve() / 'mlflow.db'}"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def config_hash(self) -> str:
        """A stable hash of the effective configuration (run id excluded)."""
        d = self.as_dict()
        d.pop("run_id", None)
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


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers, booleans, null and lists work."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set clv.model=pareto_nbd")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
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
