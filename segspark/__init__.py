"""segspark: customer segmentation strategy on Spark, written to a Delta lakehouse."""

from __future__ import annotations

__version__ = "0.1.0"
