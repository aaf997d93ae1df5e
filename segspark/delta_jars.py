"""Delta Lake's Spark jars (and Hadoop's S3A connector) for a session the job starts: resolved once
from Maven, then loaded from disk.

The coordinates are the ones delta-spark's own ``configure_spark_with_delta_pip`` names for the installed
``delta-spark`` and ``pyspark`` packages: ``io.delta:delta-spark_<Spark major.minor>_2.13:<version>``.
Spark's own resolver (Ivy, ``spark.jars.packages``) fetches them and their dependencies from Maven
Central (or the repositories in ``spark.jars.repositories`` / ``spark.jars.ivySettings``) into its cache,
in a child process whose output is kept: Ivy prints a resolution report of some 60 lines on every start.
The list of jar files it resolved is remembered (``~/.cache/segspark``), so a job's own start loads them
with ``spark.jars``: no report, no resolution, no network.

Hadoop's S3A connector (``s3a://`` paths) is resolved the same way when a location is on S3:
``org.apache.hadoop:hadoop-aws`` at the Hadoop version of pyspark's own jars, with the AWS SDK bundle
its POM names (``resolve_s3a``).

Nothing here runs on a cluster, Databricks or a Spark Connect server: they bring their own Delta and
file systems. Nothing here needs Maven at import time. ``python -m segspark.delta_jars [delta] [s3a]``
resolves ahead of time (CI does, before the tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path

from segspark.errors import EnvironmentProblem

SCALA = "2.13"  # the Scala of pyspark's own jars (Spark 4 has no other)
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# the resolver's settings a user may give in spark.conf (a mirror, an offline repository)
RESOLVER_KEYS = ("spark.jars.repositories", "spark.jars.ivySettings", "spark.jars.ivy")
RESOLVE_TIMEOUT_S = 900
# Spark's own data-source names for Delta; jars already given by the user are used as given
_DELTA_JAR_HINTS = ("delta-spark", "delta-core")

# Started in a child process: a session with spark.jars.packages, which resolves the package and its
# dependencies before its JVM starts and lists the jar files in spark.jars. Public API only.
_RESOLVE = """
import sys
from pyspark.sql import SparkSession
builder = SparkSession.builder.master("local[1]").appName("segspark-resolve-delta")
for pair in sys.argv[1:]:
    key, _, value = pair.partition("=")
    builder = builder.config(key, value)
spark = builder.config("spark.ui.enabled", "false").getOrCreate()
print("SEGSPARK_JARS=" + (spark.conf.get("spark.jars", "") or ""))
spark.stop()
"""


class JarsUnavailable(EnvironmentProblem):
    """A package's jars could not be resolved (no network, no repository holds them)."""


class DeltaJarsUnavailable(JarsUnavailable):
    """Delta's Spark jars could not be resolved (no network, no repository holds them)."""


class S3AJarsUnavailable(JarsUnavailable):
    """Hadoop's S3A connector could not be resolved."""


def coordinates() -> str | None:
    """``io.delta:delta-spark_<spark>_2.13:<version>`` for the installed packages (None without them)."""
    try:
        version = metadata.version("delta-spark")
    except metadata.PackageNotFoundError:
        return None
    import pyspark

    spark = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark}_{SCALA}:{version}"


def hadoop_version() -> str | None:
    """The Hadoop version of pyspark's own jars (``jars/hadoop-client-api-<version>.jar``)."""
    import pyspark

    folders = [Path(pyspark.__file__).parent / "jars"]
    if os.environ.get("SPARK_HOME"):
        folders.append(Path(os.environ["SPARK_HOME"]) / "jars")
    for folder in folders:
        for jar in sorted(folder.glob("hadoop-client-api-*.jar")):
            return jar.name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    return None


def s3a_coordinates() -> str | None:
    """``org.apache.hadoop:hadoop-aws:<the Hadoop of pyspark's jars>`` (None without those jars)."""
    version = hadoop_version()
    return None if version is None else f"org.apache.hadoop:hadoop-aws:{version}"


def user_supplies_s3a(conf: Mapping[str, str]) -> bool:
    """True when ``spark.conf`` already loads Hadoop's S3A connector (``spark.jars[.packages]``)."""
    return "hadoop-aws" in f"{conf.get('spark.jars', '')},{conf.get('spark.jars.packages', '')}"


def user_supplies_delta(conf: Mapping[str, str]) -> bool:
    """True when ``spark.conf`` already loads Delta's jars (``spark.jars`` or ``spark.jars.packages``)."""
    given = f"{conf.get('spark.jars', '')},{conf.get('spark.jars.packages', '')}"
    return any(hint in given for hint in _DELTA_JAR_HINTS)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segspark"


def _cache_file(coords: str, resolver: Mapping[str, str], prefix: str = "delta-jars") -> Path:
    key = json.dumps({"coordinates": coords, **resolver}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{prefix}-{digest}.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One resolution at a time on this machine (two jobs, or two test workers, starting together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(file: Path) -> list[str] | None:
    try:
        jars = json.loads(file.read_text(encoding="utf-8"))["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    paths = [Path(urllib.parse.urlparse(j).path) for j in jars]
    return jars if jars and all(p.is_file() for p in paths) else None


def resolve(conf: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Delta's coordinates and the local jar files that load them (resolved on the first call, then
    cached). ``conf``: the job's ``spark.conf`` (its resolver settings are used).

    Raises ``DeltaJarsUnavailable`` with one line saying why (no delta-spark package, no repository
    reachable or holding the jars)."""
    coords = coordinates()
    if coords is None:
        raise DeltaJarsUnavailable(
            "the delta-spark Python package is not installed (pip install 'segspark[spark]')"
        )
    return coords, resolve_package(coords, conf, "delta-jars", DeltaJarsUnavailable)


def resolve_s3a(conf: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Hadoop's S3A connector for pyspark's Hadoop and the local jar files that load it (with the AWS
    SDK bundle), resolved on the first call, then cached. Raises ``S3AJarsUnavailable``."""
    coords = s3a_coordinates()
    if coords is None:
        raise S3AJarsUnavailable("pyspark's jars name no Hadoop version (no jars/hadoop-client-api-*.jar)")
    return coords, resolve_package(coords, conf, "hadoop-aws-jars", S3AJarsUnavailable)


def resolve_package(
    coords: str, conf: Mapping[str, str] | None, prefix: str, error: type[JarsUnavailable]
) -> list[str]:
    """The local jar files of Maven package ``coords`` and its dependencies: from the cache file
    ``<prefix>-<digest>.json``, else resolved by Spark's resolver in a child process (one at a time)."""
    resolver = {k: v for k, v in (conf or {}).items() if k in RESOLVER_KEYS}
    file = _cache_file(coords, resolver, prefix)
    jars = _cached(file)
    if jars is not None:
        return jars
    with _locked(file.with_suffix(".lock")):
        jars = _cached(file)  # another process may have resolved them meanwhile
        if jars is None:
            jars = _resolve_in_child(coords, resolver, error)
            file.write_text(json.dumps({"coordinates": coords, "jars": jars}, indent=1), encoding="utf-8")
    return jars


def _resolve_in_child(
    coords: str, resolver: Mapping[str, str], error: type[JarsUnavailable] = DeltaJarsUnavailable
) -> list[str]:
    pairs = [f"spark.jars.packages={coords}", *[f"{k}={v}" for k, v in resolver.items()]]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RESOLVE, *pairs],
            capture_output=True,
            text=True,
            env=env,
            timeout=RESOLVE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise error(f"resolving {coords} took over {RESOLVE_TIMEOUT_S} s") from None
    listed = [line for line in proc.stdout.splitlines() if line.startswith("SEGSPARK_JARS=")]
    jars = [j for j in listed[-1].removeprefix("SEGSPARK_JARS=").split(",") if j] if listed else []
    artifact = coords.split(":")[1]
    if proc.returncode != 0 or not any(artifact in j for j in jars):
        raise error(f"cannot fetch {coords}: {_reason(proc.stderr + proc.stdout)}")
    return jars


def _reason(output: str) -> str:
    """The line of Ivy's (or the JVM's) output that says why the resolution failed."""
    lines = [line.strip(" :\t") for line in output.splitlines() if line.strip(" :\t")]
    for marker in ("unresolved dependency", "UnknownHostException", "Connection refused", "not found"):
        hits = [line for line in lines if marker in line]
        if hits:  # from the marker on: "unresolved dependency: io.delta#delta-spark_...;4.4.0: not found"
            return hits[0][hits[0].index(marker) :].rstrip("]")[:300]
    return (lines[-1] if lines else "no output")[:300]


def session_conf(jars: list[str], conf: Mapping[str, str], partitions: str | None = None) -> dict[str, str]:
    """The settings that load Delta into a session: the jars (after any the user gives), Delta's SQL
    extension (after any of the user's) and Delta's catalog.

    ``partitions`` (a local session's task threads, at most its shuffle partitions:
    ``session.delta_tasks``): Delta rebuilds a table's snapshot from its
    log in ``snapshotPartitions`` tasks (50 by default, sized for clusters) and vacuum lists files in up
    to ``parallelPartitionDiscovery.parallelism`` (10,000); on one machine a handful of tasks do the
    same work without the scheduling of hundreds (Delta's own test sessions use 2)."""
    user_jars = conf.get("spark.jars", "")
    extensions = [e for e in (conf.get("spark.sql.extensions", "") or "").split(",") if e]
    out = {
        "spark.jars": ",".join(x for x in (user_jars, *jars) if x),
        "spark.sql.extensions": ",".join([*extensions, DELTA_EXTENSION]),
        "spark.sql.catalog.spark_catalog": conf.get("spark.sql.catalog.spark_catalog", DELTA_CATALOG),
    }
    if partitions:
        out["spark.databricks.delta.snapshotPartitions"] = partitions
        out["spark.sql.sources.parallelPartitionDiscovery.parallelism"] = partitions
    return {
        **out,
        **{k: v for k, v in conf.items() if k in out and k not in ("spark.jars", "spark.sql.extensions")},
    }


def _main(argv: list[str]) -> int:
    """Resolve ahead of time: ``delta`` (Delta's jars), ``s3a`` (Hadoop's S3A connector), or both."""
    wanted = argv or ["delta"]
    for what in wanted:
        coords, jars = resolve() if what == "delta" else resolve_s3a()
        print(f"{coords}: {len(jars)} jar file(s), cached in {cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
