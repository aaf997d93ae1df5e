"""Entry point for ``spark-submit`` and Databricks ``spark_python_task`` / ``python_wheel_task``.

    spark-submit jobs/run_pipeline.py --conf conf/retail.yaml --set input.transactions.path=...
    spark-submit jobs/run_pipeline.py score --conf ...        # any segspark command; default: run

Arguments are those of ``segspark``; the default command is ``run``. Exits non-zero on failure.
"""

from __future__ import annotations

import sys

from segspark.cli import COMMANDS
from segspark.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        args = ["run", *args]
    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
