"""The one way the report's readers bring a table to the driver: :func:`small_table`, a ``toPandas``
that refuses anything that is not an aggregate, and :func:`drop_stamp` for the run's stamp columns."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame

from segspark import schema as S
from segspark.errors import InputError


def small_table(df: DataFrame, name: str, limit: int = 50_000) -> pd.DataFrame:
    """``toPandas`` for tables that are aggregates by construction; refuses anything that is not."""
    pdf = df.limit(limit + 1).toPandas()
    if len(pdf) > limit:
        raise InputError(f"table '{name}': more than {limit} rows; the report reads aggregate tables only")
    return pdf


def drop_stamp(df: DataFrame) -> DataFrame:
    """``df`` without the run's stamp columns (``run_id``, ``as_of_date``)."""
    return df.drop(*[c for c in (S.RUN_ID, S.AS_OF_DATE) if c in df.columns])
