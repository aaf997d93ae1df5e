"""Lakehouse IO: the only package that calls ``spark.read``, ``.write`` or ``deltalake``."""

from __future__ import annotations

from segspark.io.delta_rs import CommitResult
from segspark.io.lakehouse import InputInfo, Lakehouse, resolve_engine

__all__ = ["CommitResult", "InputInfo", "Lakehouse", "resolve_engine"]
