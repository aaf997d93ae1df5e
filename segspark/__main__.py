from __future__ import annotations

from segspark.cli import main

raise SystemExit(main())
