"""Quarantine rows: the flagged rows with their table, rule, reason and raw values as JSON, without
the ``privacy.pii_columns`` fields and with the customer id as its pseudonym (or left out)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark import schema as S
from segspark.config import ERASED_RULE, PrivacyConfig, QualityConfig
from segspark.ingest.rules import TABLE_RULES, rule_reasons

# Internal column names of the flagged frame: the rule a row broke (null: clean) and its raw JSON.
RULE = "_dq_rule"
RAW = "_dq_raw"


def kept(column: Column) -> Column:
    """What a quarantined row keeps of ``column`` (its customer key, its raw JSON): nothing for a row
    of an erased customer (rule ``erased_customer``): the erasure leaves neither key nor values."""
    return F.when(F.col(RULE) != ERASED_RULE, column)


def raw_fields(src_cols: list[str], privacy: PrivacyConfig, pseudo: bool) -> list[Column]:
    """The quarantine's raw JSON: source columns minus PII, the customer id as its pseudonym (left
    out when pseudonymization is on but no key is given)."""
    fields: list[Column] = []
    pii = {c.lower() for c in privacy.pii_columns}
    for c in src_cols:
        if c.lower() in pii:
            continue
        if c == S.CUSTOMER_ID:
            if pseudo:
                fields.append(F.col(S.CUSTOMER_ID).alias(c))  # the parsed column: the pseudonym
            elif not privacy.pseudonymize:
                fields.append(F.col(f"_src_{c}").alias(c))
            continue
        fields.append(F.col(f"_src_{c}").alias(c))
    return fields


def quarantine_rows(flagged: DataFrame, table: str, cfg: QualityConfig, with_id: bool) -> DataFrame:
    """The flagged rows as quarantine rows: table, customer key (``with_id``), rule, reason, raw JSON."""
    reasons = rule_reasons(cfg)
    reason_map = F.create_map(*[F.lit(x) for r in TABLE_RULES[table] for x in (r, reasons[r])])
    return flagged.where(F.col(RULE).isNotNull()).select(
        F.lit(table).alias(S.Q_SOURCE_TABLE),
        (kept(F.col(S.CUSTOMER_ID).cast("string")) if with_id else F.lit(None).cast("string")).alias(
            S.CUSTOMER_ID
        ),
        F.col(RULE).alias(S.Q_RULE),
        F.try_element_at(reason_map, F.col(RULE)).alias(S.Q_REASON),
        kept(F.col(RAW)).alias(S.Q_RAW),
    )
