"""Privacy: keyed pseudonyms for customer keys, PII removal and coarsening of demographics.

Pseudonyms are HMAC-SHA256 (RFC 2104) of the source id, as lower-case hex, computed with built-in
Spark functions only, so they run on any cluster and under Spark Connect and equal
``hmac.new(key, id.encode("utf-8"), hashlib.sha256).hexdigest()``. Whoever holds the key can
re-derive a customer's pseudonym from the source id (how a segment list is activated in a CRM);
without the key the pseudonyms cannot be linked back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import logging
import os
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StructField, StructType

from segspark import schema as S
from segspark.config import PrivacyConfig
from segspark.errors import ConfigError, InputError

log = logging.getLogger(__name__)

AGE_BAND: str = "age_band"
# Column metadata marking a column as already pseudonymized, so a second call does not hash twice.
PSEUDONYM_META: str = "segspark.pseudonym"
_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104 "B")
_IPAD = "_segspark_ipad"
_OPAD = "_segspark_opad"
# The demo's documented, public key: ``segspark demo`` prints follow-up commands that pass it in
# ``$SEGSPARK_PSEUDO_KEY`` so ``erase``/``score``/``monitor`` find the demo's customers. Never for real data.
DEMO_KEY = "segspark-demo-key-not-secret"
_DEMO_KEY = DEMO_KEY.encode("utf-8")

# Columns a minimized customers table keeps (besides the age band), in this order.
CUSTOMER_OUTPUT_COLUMNS: tuple[str, ...] = (
    S.CUSTOMER_ID,
    S.SIGNUP_TS,
    S.ACQUISITION_CHANNEL,
    S.COUNTRY,
    AGE_BAND,
    S.GENDER,
    S.INCOME_BAND,
    S.INDUSTRY,
    S.COMPANY_SIZE,
)


def _databricks_secret(scope: str, key: str) -> str | None:
    """A secret from a Databricks secret scope, or None where dbutils is not available."""
    try:
        from databricks.sdk.runtime import dbutils
    except Exception:  # not on Databricks (or no SDK): the environment variable is the only source
        return None
    try:
        value = dbutils.secrets.get(scope=scope, key=key)
    except Exception as exc:
        raise ConfigError(f"cannot read secret '{key}' from secret scope '{scope}': {exc}") from None
    return str(value) if value else None


def resolve_key(cfg: PrivacyConfig, demo: bool = False) -> bytes:
    """The pseudonymization key: env var ``cfg.key_env``, else the Databricks secret, else (demo only)
    a fixed demo key with a warning. A missing key in a real run is a ``ConfigError``."""
    value = os.environ.get(cfg.key_env, "")
    if value:
        return value.encode("utf-8")
    if cfg.secret_scope and cfg.secret_key:
        secret = _databricks_secret(cfg.secret_scope, cfg.secret_key)
        if secret:
            return secret.encode("utf-8")
    if demo:
        log.warning(
            "no pseudonymization key in $%s: the demo uses a built-in key, so its pseudonyms are not secret",
            cfg.key_env,
        )
        return _DEMO_KEY
    where = f"environment variable {cfg.key_env}"
    if cfg.secret_scope and cfg.secret_key:
        where += f" or secret '{cfg.secret_key}' in scope '{cfg.secret_scope}'"
    raise ConfigError(
        f"no pseudonymization key: set the {where} (privacy.key_env), "
        "or set privacy.pseudonymize=false to keep source ids"
    )


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """RFC 2104 inner and outer padded keys."""
    if not key:
        raise ConfigError("the pseudonymization key is empty")
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\x00")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hmac_hex(message: Column, ipad: Column, opad: Column) -> Column:
    """HMAC-SHA256 hex of ``message`` (cast to UTF-8 bytes) given the padded keys as binary columns.

    H((K ^ opad) || H((K ^ ipad) || m)); null in, null out.
    """
    msg = message.cast("string").cast("binary")
    inner = F.unhex(F.sha2(F.concat(ipad, msg), 256))
    return F.sha2(F.concat(opad, inner), 256)


def key_columns(spark: SparkSession, key: bytes) -> tuple[Column, Column]:
    """The two padded keys as scalar subqueries over a one-row frame: usable in any expression of
    any frame, evaluated once per query, and absent from printed query plans (which show the
    subquery, never its value; a literal would print the key)."""
    ipad, opad = _pads(key)
    schema = StructType([StructField(_IPAD, BinaryType(), False), StructField(_OPAD, BinaryType(), False)])
    keys = spark.createDataFrame([(bytearray(ipad), bytearray(opad))], schema)
    return keys.select(_IPAD).scalar(), keys.select(_OPAD).scalar()


def pseudonym_of(column: Column, spark: SparkSession, key: bytes) -> Column:
    """The keyed pseudonym (HMAC-SHA256 hex) of ``column``."""
    ipad, opad = key_columns(spark, key)
    return hmac_hex(column, ipad, opad)


def mark_pseudonymized(column: Column, name: str) -> Column:
    """Alias ``column`` to ``name`` carrying the metadata that marks it as a pseudonym."""
    return column.alias(name, metadata={PSEUDONYM_META: True})


def is_pseudonymized(df: DataFrame, column: str) -> bool:
    return bool(df.schema[column].metadata.get(PSEUDONYM_META, False))


def pseudonymize(df: DataFrame, key: bytes, columns: Sequence[str] = (S.CUSTOMER_ID,)) -> DataFrame:
    """Replace each of ``columns`` by its keyed HMAC-SHA256 hex (64 lower-case characters).

    Columns already marked as pseudonyms (e.g. by ``ingest.validate`` with a key) are left as they
    are, so calling this twice never hashes twice. Column order is kept.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"cannot pseudonymize missing column(s) {missing}; columns are {df.columns}")
    todo = [c for c in columns if not is_pseudonymized(df, c)]
    if not todo:
        return df
    ipad, opad = key_columns(df.sparkSession, key)
    hashed = {c: mark_pseudonymized(hmac_hex(F.col(c), ipad, opad), c) for c in todo}
    return df.select(*[hashed.get(c, F.col(c)) for c in df.columns])


def age_band(age: Column, bands: Sequence[int]) -> Column:
    """Coarsen an age to a band label: with bands [18, 25, 65]: '<18', '18-24', '25-64', '65+'."""
    edges = sorted(bands)
    if not edges:
        raise ConfigError("privacy.age_bands is empty: give at least one band edge, e.g. [18, 25, 35]")
    expr = F.when(age.isNull(), F.lit(None).cast("string")).when(age < edges[0], F.lit(f"<{edges[0]}"))
    for lo, hi in itertools.pairwise(edges):
        expr = expr.when(age < hi, F.lit(f"{lo}-{hi - 1}"))
    return expr.otherwise(F.lit(f"{edges[-1]}+"))


def minimize(df: DataFrame, cfg: PrivacyConfig, reference_date: dt.date | None = None) -> DataFrame:
    """Customers without PII: keeps only the segmentation attributes, coarsens age to ``age_band``.

    Needs ``customer_id``; uses ``age`` if present, else ``birth_year`` (age in the year of
    ``reference_date``, which the pipeline sets to ``as_of_date``; default today in UTC). Missing
    optional attributes come out as nulls, so the output schema is always ``CUSTOMER_OUTPUT_COLUMNS``.
    Everything else (``privacy.pii_columns`` and any column not listed) is dropped.
    """
    pii = {c.lower() for c in cfg.pii_columns}
    if S.CUSTOMER_ID not in df.columns:
        raise InputError(f"customers table lacks '{S.CUSTOMER_ID}'; columns are {df.columns}")
    cols = {c.lower(): c for c in df.columns}
    if S.AGE in cols:
        age = F.col(cols[S.AGE]).try_cast("int")
    elif S.BIRTH_YEAR in cols:
        year = (reference_date or dt.datetime.now(dt.timezone.utc).date()).year
        age = F.lit(year) - F.col(cols[S.BIRTH_YEAR]).try_cast("int")
    else:
        age = F.lit(None).cast("int")
    out: list[Column] = []
    for name in CUSTOMER_OUTPUT_COLUMNS:
        if name == AGE_BAND:
            out.append(age_band(age, cfg.age_bands).alias(AGE_BAND))
        elif name in cols and name not in pii:
            out.append(F.col(cols[name]).alias(name) if name != S.CUSTOMER_ID else F.col(cols[name]))
        else:
            kind = "timestamp" if name == S.SIGNUP_TS else "string"
            out.append(F.lit(None).cast(kind).alias(name))
    return df.select(*out)
