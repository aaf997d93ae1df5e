"""The analytical SQL the pipeline runs: readable ``.sql`` files shipped inside the package.

Each file is one query over named inputs (``FROM transactions``, ``JOIN acquisition``) and named
parameters (``:as_of_date``). Analysts run a file as it stands in Databricks SQL or any Spark SQL
session where tables or views of those names exist; the report prints it in its appendix; and the
pipeline runs the same text through :func:`run_sql`, which binds each input to a DataFrame.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from segspark.errors import SegsparkError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def sql_names() -> list[str]:
    """Names of the SQL files shipped with the package (without ``.sql``)."""
    root = resources.files(__name__)
    return sorted(p.name[: -len(".sql")] for p in root.iterdir() if p.name.endswith(".sql"))


def load_sql(name: str) -> str:
    """The text of ``segspark/sql/<name>.sql``."""
    if not _NAME.match(name):
        raise SegsparkError(f"SQL file name {name!r}: use lower-case letters, digits and '_'")
    path = resources.files(__name__).joinpath(f"{name}.sql")
    if not path.is_file():
        raise SegsparkError(f"no SQL file '{name}.sql' in segspark/sql; available: {', '.join(sql_names())}")
    return path.read_text(encoding="utf-8")


def bind_views(text: str, views: Mapping[str, object]) -> str:
    """Turn ``FROM <view>`` / ``JOIN <view>`` into ``{<view>}`` placeholders for ``spark.sql(**kwargs)``.

    Binding DataFrames as keyword arguments, rather than registering session-wide temp views, keeps
    concurrent queries from seeing each other's inputs and is safe on Spark Connect, where a query
    is analysed lazily and a later view of the same name would otherwise be picked up.
    """
    out = text.replace("{", "{{").replace("}", "}}")
    for view in views:
        if not _NAME.match(view):
            raise SegsparkError(f"view name {view!r}: use lower-case letters, digits and '_'")
        pattern = re.compile(rf"\b(FROM|JOIN)(\s+){view}\b", re.IGNORECASE)
        out, hits = pattern.subn(rf"\1\2{{{view}}}", out)
        if hits == 0:
            raise SegsparkError(f"the SQL never reads the input view '{view}' (FROM/JOIN {view})")
    return out


def run_sql(
    spark: SparkSession,
    name: str,
    views: Mapping[str, DataFrame],
    params: Mapping[str, Any] | None = None,
) -> DataFrame:
    """Run ``<name>.sql`` with ``views`` bound to its inputs and ``params`` to its ``:markers``."""
    from pyspark.sql import functions as F

    if not views:
        return spark.sql(load_sql(name), args=dict(params or {}))
    # Classic PySpark binds each DataFrame as a temporary view and drops the view once the query is
    # analysed, and dropping a view uncaches a cached plan equal to the view's (Catalog.dropTempView):
    # a persisted frame bound as it stands was silently unpersisted before the query ran. Behind a
    # filter that is always true (the optimizer removes it) the view's plan is another plan, and the
    # query still reads the cached frame inside it.
    bound = {view: df.where(F.lit(True)) for view, df in views.items()}
    return spark.sql(bind_views(load_sql(name), bound), args=dict(params or {}), **bound)
