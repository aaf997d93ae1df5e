"""Lakehouse IO: the only package that calls ``spark.read``, ``.write`` or ``deltalake``."""

from __future__ import annotations

from segspark.io.engine import Commit, CommitResult, TableEngine
from segspark.io.lakehouse import InputInfo, Lakehouse, make_engine, resolve_engine

__all__ = ["Commit", "CommitResult", "InputInfo", "Lakehouse", "TableEngine", "make_engine", "resolve_engine"]
