"""The one Spark session factory: embedded local, an active cluster/Databricks session, or Spark Connect.

Nothing here (or anywhere in segspark) uses the driver-side Spark context, RDDs or the JVM gateway, so
the job runs on Spark Connect, Databricks serverless and shared clusters. A local session the job starts
itself is sized to the machine (:func:`sized_conf`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from segspark import delta_jars
from segspark.errors import ConfigError, EnvironmentProblem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from segspark.config import SparkConfig

log = logging.getLogger(__name__)

# Whether a session the job starts loads Delta's Spark jars: not at all (the embedded engine writes),
# if they can be had (engine auto), or as a requirement (engine delta-spark: exit 2 without them).
DeltaJars = Literal["off", "require"]

# Sessions this process started (not one a cluster or notebook already had): the CLI stops them on
# exit, which also shuts down a local Spark Connect server.
_OWNED: list[SparkSession] = []


def stop_owned() -> None:
    while _OWNED:
        session = _OWNED.pop()
        try:
            session.stop()
        except Exception as exc:  # stopping must never mask the command's own result
            log.debug("stopping Spark failed: %s", exc)


SUPPORTED_JAVA = (17, 21)
LOG4J_CONF = Path(__file__).with_name("log4j2.properties")
JAVA_HINT = (
    "install a Java 17 or 21 runtime (e.g. 'apt-get install openjdk-17-jre-headless') and set JAVA_HOME"
)


def _java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.path.exists(candidate):
            return candidate
    return shutil.which("java")


def check_java() -> int:
    """Return the Java major version, or raise one clear line saying what to install."""
    java = _java_binary()
    if java is None:
        raise EnvironmentProblem(f"no Java runtime found: {JAVA_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"cannot run {java} ({exc}): {JAVA_HINT}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise EnvironmentProblem(f"cannot tell the version of {java}: {JAVA_HINT}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major not in SUPPORTED_JAVA:
        raise EnvironmentProblem(
            f"Java {major} found at {java}, but Spark 4 needs Java 17 or 21: {JAVA_HINT}"
        )
    return major


def check_pyspark() -> None:
    """Raise one clear line when PySpark is missing.

    The wheel does not require PySpark: Databricks runtimes, serverless environments and clusters bring
    their own, which a pip-installed copy would shadow. Elsewhere it comes with ``segspark[spark]``.
    """
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        raise EnvironmentProblem(
            "PySpark is not installed: pip install 'segspark[spark]' (or 'segspark[connect]' for a "
            "Spark Connect client); on Databricks and Spark clusters it comes with the runtime"
        )


def active_session() -> SparkSession | None:
    """The session a cluster, Databricks job or notebook already started, if any."""
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


# Runtime SQL settings the job's plans are written for, applied to every session it uses (local,
# Connect, or a cluster's own session; where a platform refuses one, the job runs without it).
# replaceHashWithSortAgg: the per-customer stages shuffle by customer and sort within partitions
# (customer, order), so every grouping that follows (order, day, customer) streams over sorted
# rows as one sort aggregate, instead of building a partial and then a final hash table per level:
# measured on 10M lines / 2.5M customers, the CLV summary goes from 16 s to 10 s.
# parameterSubstitution.constantsOnly: since Spark 4.1 the SQL parser binds ``spark.sql(q, args=...)``
# parameters, and a parser an extension injects (Delta's, Iceberg's) drops them: every query of the
# job's SQL files failed with UNBOUND_SQL_PARAMETER once Delta's extension was loaded (delta-io/delta
# issue 7640). The legacy mode binds them in analysis, which works behind any parser; the job's
# parameters are all constants, which is what that mode allows.
JOB_CONF = {
    "spark.sql.execution.replaceHashWithSortAgg": "true",
    "spark.sql.legacy.parameterSubstitution.constantsOnly": "true",
}


def runtime_sql_conf(settings: Mapping[str, str]) -> dict[str, str]:
    """The ``spark.sql.*`` entries of ``settings``: those a running session (Connect included) accepts."""
    return {key: value for key, value in settings.items() if key.startswith("spark.sql.")}


def apply_job_conf(spark: SparkSession, settings: Mapping[str, str] | None = None) -> None:
    """Set ``settings`` (default :data:`JOB_CONF`) on ``spark`` where the session does not set the key.

    A session the job did not build (a Spark Connect server, a cluster's or notebook's session) gets
    the job's runtime SQL settings this way: microsecond Parquet timestamps (delta-rs, Power BI and
    DuckDB read them; INT96 they do not all read), the UTC session time zone the dates are cut in,
    Arrow transfers and adaptive execution; a value its owner set explicitly wins.
    """
    for key, value in (JOB_CONF if settings is None else settings).items():
        try:
            if spark.conf.get(key, None) is None:  # not set explicitly by the cluster or the user
                spark.conf.set(key, value)
        except Exception as exc:  # a managed platform may refuse a setting: plans still work
            log.info("spark: cannot set %s (%s); running without it", key, str(exc).splitlines()[0])


# ---- sizing the embedded session -------------------------------------------------------------------
# In local mode one JVM is driver and executor: its heap holds the cached and shuffled data, the
# sort and aggregation buffers and what the driver collects. Spark's 1 GB default is what made a
# 10M-line run die of OutOfMemoryError on a 24 GB machine. The heap gets 60% of the memory; the
# other 40% is for the JVM's own off-heap use (metaspace, code cache, GC structures, Arrow and
# network buffers: 10-20% of the heap), the pandas UDF workers (one Python per core), the driver's
# own Python (model fits on samples and sufficient statistics, MLflow) and the OS page cache.
HEAP_SHARE = 0.6
HEAP_MIN_MIB = 1024  # Spark's own default, and its minimum is ~450 MB
HEAP_MAX_MIB = 31 * 1024  # from 32 GB up the JVM drops compressed object pointers: more memory per object
# Four tasks per core: a customer with many orders or a skewed key delays one task of four rather
# than a whole core's share, and each task sorts or aggregates a quarter of the core's share of a
# large input, which spills less. Adaptive execution merges the small partitions of a small input.
PARTITIONS_PER_CORE = 4
MIN_PARTITIONS = 8
# Beyond that floor the partitions grow with the input (scale_shuffle_partitions): a task sorts,
# windows or aggregates about this many input rows (a few hundred MB) at any input size, instead
# of one eighth of whatever came in (12M lines a task at 100M lines: each sort spilled).
ROWS_PER_PARTITION = 2_000_000
MIB = 1 << 20
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Machine:
    """What this process may use: cores (affinity and CPU quota) and memory (RAM or container limit)."""

    cores: int
    memory_bytes: int
    memory_source: str  # "physical" or "cgroup limit"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].lstrip("-").isdigit() else None


def _cgroup_dirs(root: Path, controller: str, proc_cgroup: Path) -> list[Path]:
    """Folders that may hold this process's limits for ``controller``: its own cgroup, then the mount's root.

    ``proc_cgroup`` lines read ``id:controllers:path``; v2 has the one line ``0::path``.
    """
    dirs: list[Path] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":
            dirs.append(root / path.lstrip("/"))
        elif controller in controllers.split(","):
            dirs.append(root / controller / path.lstrip("/"))
    return [*dirs, root, root / controller]


def _cgroup_memory_limit(root: Path, proc_cgroup: Path) -> int | None:
    """The smallest memory limit set on this process's cgroup (v2 or v1), or None without one."""
    limits = [
        value
        for folder in _cgroup_dirs(root, "memory", proc_cgroup)
        for name in ("memory.max", "memory.limit_in_bytes")
        # v2 writes "no limit" as "max" (read as None), v1 as about 2^63
        if (value := _read_int(folder / name)) is not None and 0 < value < (1 << 60)
    ]
    return min(limits) if limits else None


def _cgroup_cpu_limit(root: Path, proc_cgroup: Path) -> int | None:
    """Cores allowed by the smallest CPU quota on this process's cgroup (v2 or v1), or None without one."""
    limits = []
    for folder in _cgroup_dirs(root, "cpu", proc_cgroup):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                limits.append(math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            pass
        quota_us, period_us = _read_int(folder / "cpu.cfs_quota_us"), _read_int(folder / "cpu.cfs_period_us")
        if quota_us and period_us and quota_us > 0:  # v1: -1 is no quota
            limits.append(math.ceil(quota_us / period_us))
    return max(1, min(limits)) if limits else None


def detect_machine(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Machine:
    """Cores and memory this process may use, container (cgroup) limits included."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, quota)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a small machine
        physical = 4 << 30
    limit = _cgroup_memory_limit(cgroup_root, proc_cgroup)
    if limit is not None and limit < physical:
        return Machine(cores=max(1, cores), memory_bytes=limit, memory_source="cgroup limit")
    return Machine(cores=max(1, cores), memory_bytes=physical, memory_source="physical")


def local_threads(master: str, machine_cores: int) -> int | None:
    """Task threads of a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master; None if not local."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match is None:
        return None
    if match.group(1) is None:
        return 1
    return machine_cores if match.group(1) == "*" else max(1, int(match.group(1)))


def sized_conf(
    cores: int,
    memory_bytes: int,
    *,
    driver_memory: str = "auto",
    shuffle_partitions: int | str = "auto",
    conf: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Driver heap and shuffle partitions of a local session on ``cores`` task threads and ``memory_bytes``.

    ``auto`` sizes: heap = 60% of memory within 1g..31g (whole gigabytes from 2g up), partitions =
    max(8, 4 x cores). A given size is used as it is; an entry in ``conf`` wins over both.
    """
    if driver_memory == "auto":
        mib = min(HEAP_MAX_MIB, max(HEAP_MIN_MIB, int(memory_bytes * HEAP_SHARE) // MIB))
        heap = f"{mib // 1024}g" if mib >= 2048 else f"{mib}m"
    else:
        heap = driver_memory
    if shuffle_partitions == "auto":
        partitions: int | str = max(MIN_PARTITIONS, PARTITIONS_PER_CORE * cores)
    else:
        partitions = shuffle_partitions
    explicit = conf or {}
    return {
        "spark.driver.memory": explicit.get("spark.driver.memory", heap),
        "spark.sql.shuffle.partitions": explicit.get("spark.sql.shuffle.partitions", str(partitions)),
    }


# ---- the JIT of a short local run ------------------------------------------------------------------
# A local run of a few minutes spends about a fifth of its CPU in HotSpot's optimizing compiler (C2),
# compiling Spark's and Delta's code paths for a speed-up the run ends before it pays back. With the
# client compiler only (C1) the suite's 600-customer run took 113 and 124 CPU seconds against 139 and
# 155 with the default tiers (README: Performance). A long run needs C2's code: the quick JIT is for
# small inputs only, judged by the transaction lines (what the work grows with) before the JVM starts.
#
# With C1 only, HotSpot sizes its code cache at 48 MB instead of the tiered 240 MB. Spark generates and
# compiles code for every query plan, so a session that runs many plans fills it, and HotSpot's code
# sweeper then flushes and the JIT recompiles without end: in the suite's session (one JVM running
# dozens of whole pipelines) the sweeper thread alone took 369 s of CPU of 27 minutes, with the cache
# at 47 of its 48 MB. The quick JIT keeps the default tiers' code cache size.
QUICK_JIT_OPTION = "-XX:TieredStopAtLevel=1"
QUICK_JIT_CODE_CACHE = "-XX:ReservedCodeCacheSize=240m"
# the JVM options of the quick JIT, as a JVM takes them (also the test clusters' JAVA_TOOL_OPTIONS)
QUICK_JIT_OPTIONS = f"{QUICK_JIT_OPTION} {QUICK_JIT_CODE_CACHE}"
QUICK_JIT_MAX_TX_BYTES = 8 * 1024**2  # ~500,000 lines of Parquet (1M generated lines: 16.5 MB)
GENERATED_TX_BYTES_PER_CUSTOMER = 200  # segspark generate: ~12 lines of ~16.5 bytes per customer


def local_bytes(location: str | None) -> int | None:
    """Bytes of the files under ``location`` (a folder or file on a local disk), or None when it is
    not one (a catalog table, an object store, a missing path): its size is unknown before Spark."""
    if not location or ("://" in location and not location.startswith("file:")):
        return None
    path = Path(location.removeprefix("file://").removeprefix("file:"))
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def jit_choice(jit: str, tx_bytes: int | None) -> tuple[str, str]:
    """(``quick`` | ``full``, why) for a local session the job starts, from ``spark.jit`` and the
    bytes of the transaction input on a local disk (None: unknown, so the default tiers)."""
    if jit != "auto":
        return jit, f"spark.jit: {jit}"
    limit = f"{QUICK_JIT_MAX_TX_BYTES / 1024**2:.0f} MiB"
    if tx_bytes is None:
        return "full", "transactions of unknown size before Spark starts (not on a local disk)"
    size = f"{tx_bytes / 1024**2:.1f} MiB"
    if tx_bytes <= QUICK_JIT_MAX_TX_BYTES:
        return "quick", f"transactions {size} <= {limit}: HotSpot's client compiler only"
    return "full", f"transactions {size} > {limit}"


def _quick_jit(cfg: SparkConfig, tx_bytes: int | None) -> bool:
    """:func:`jit_choice` for a local session (or local Connect server) about to start, logged."""
    jit, why = jit_choice(cfg.jit, tx_bytes)
    log.info("spark: %s JIT (%s)", jit, why)
    return jit == "quick"


def session_jit(spark: SparkSession) -> str:
    """``quick`` when the session's driver JVM runs HotSpot's client compiler only, else ``full``
    (a cluster's, Databricks' or a Connect server's JVM: whatever its own options say)."""
    try:
        options = spark.conf.get("spark.driver.extraJavaOptions", "") or ""
    except Exception:  # a managed platform may refuse to show it: its JVM is its own
        options = ""
    return "quick" if QUICK_JIT_OPTION in options.split() else "full"


def _launched_jvm() -> bool:
    """True when spark-submit started the JVM before this Python ran: its heap is already fixed."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_conf(
    cfg: SparkConfig, machine: Machine | None = None, *, master: str | None = None, quick_jit: bool = False
) -> dict[str, str]:
    """The settings of a session the job starts: local, a local Spark Connect server, or on a cluster master.

    Sizes: for a ``local`` master (or local Connect remote) from :func:`sized_conf` on ``machine``
    (detected when None); for a cluster master only the sizes given explicitly. ``master`` overrides
    the configured one (the master spark-submit actually started). ``quick_jit``: the driver's JVM
    (a local session's only one) compiles with HotSpot's client compiler only (:func:`jit_choice`).
    """
    base = {
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.ui.enabled": "true" if cfg.ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.session.timeZone": "UTC",
        # no _SUCCESS markers inside Delta table folders
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Spark renders every query's plan for its listeners, and a plan over cached frames prints
        # each cached frame's own plan inline: the LTV:CAC query reached 65M characters, enough to
        # exhaust a 1 GB driver. Bounded, the text is still readable and memory stays flat.
        "spark.sql.maxPlanStringLength": "200000",
        # PySpark's DataFrame debugging records the Python call site of every Column and DataFrame
        # call in the JVM (three Py4J round trips and a stack walk each: ~30,000 of a 600-customer
        # run's 47,000 round trips, 137.2 -> 128.6 s for its demo). The job's own errors name the
        # table, column and rule; a user debugging a plan sets it back to "true" in spark.conf
        "spark.python.sql.dataFrameDebugging.enabled": "false",
        **JOB_CONF,
        # -XX:-DontCompileHugeMethods: Spark's generated code for a wide projection (the quality
        # rules, the RFM aggregates) has methods over HotSpot's 8,000-byte limit, which the JIT then
        # never compiles and runs interpreted; at 10M lines ingest + RFM went from 77.7 s to 68.3 s.
        "spark.driver.extraJavaOptions": (
            (f"{QUICK_JIT_OPTIONS} " if quick_jit else "")
            + "-XX:-DontCompileHugeMethods -Duser.timezone=UTC "
            f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}"
        ),
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    if master is None:
        master = cfg.remote if cfg.remote and cfg.remote.startswith("local") else cfg.master
    machine = machine or detect_machine()
    threads = local_threads(master, machine.cores)
    if threads is not None:
        # Spark creates its catalog's warehouse folder in the working folder the first time a query
        # touches the catalog (Delta's SQL does): a local run leaves nothing where it was started
        base["spark.sql.warehouse.dir"] = str(Path(tempfile.gettempdir()) / "segspark-spark-warehouse")
        base.update(
            sized_conf(
                threads,
                machine.memory_bytes,
                driver_memory=cfg.driver_memory,
                shuffle_partitions=cfg.shuffle_partitions,
                conf=cfg.conf,
            )
        )
        if _launched_jvm() and "spark.driver.memory" not in cfg.conf and cfg.driver_memory == "auto":
            del base["spark.driver.memory"]  # too late to size: spark-submit's --driver-memory holds
    else:  # a cluster manager sizes its executors; only what the user asked for is set
        if cfg.driver_memory != "auto":
            base["spark.driver.memory"] = cfg.driver_memory
        if cfg.shuffle_partitions != "auto":
            base["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    return {**base, **cfg.conf}


def _log_sizes(conf: Mapping[str, str], master: str, machine: Machine) -> None:
    """One INFO line with the sizes the session starts with and what they came from."""
    heap = conf.get("spark.driver.memory", "fixed by spark-submit" if _launched_jvm() else "Spark's default")
    log.info(
        "spark: %s on a machine with %d cores and %.1f GiB (%s): driver heap %s, %s shuffle partitions",
        master,
        machine.cores,
        machine.memory_bytes / (1 << 30),
        machine.memory_source,
        heap,
        conf.get("spark.sql.shuffle.partitions", "Spark's default"),
    )


def delta_jars_for(engine: str) -> DeltaJars:
    """What a session the job starts does about Delta's jars for ``lakehouse.engine``: loads them for
    ``delta-spark`` only. ``auto`` starts a local session without them, so it writes with the embedded
    engine, the faster of the two on one machine (README, Performance: 336 s against 364 s at
    10M lines), and a first run downloads nothing; a cluster's or Databricks' session
    that has Delta gets ``delta-spark`` from ``auto``."""
    return "require" if engine == "delta-spark" else "off"


def get_spark(
    cfg: SparkConfig,
    *,
    owned: bool = True,
    delta: DeltaJars = "off",
    s3a: Mapping[str, str] | None = None,
    tx_bytes: int | None = None,
) -> SparkSession:
    """Build or reuse the Spark session described by ``cfg``.

    Order: ``spark.remote`` (Spark Connect) if set; else an already active session (cluster,
    Databricks); else an embedded local session on ``spark.master``. ``owned``: a session this call
    starts is stopped by :func:`stop_owned` (the CLI's exit); pass False to keep it (tests, notebooks).
    ``delta``: whether a local session (or local Connect server) this call starts loads Delta's Spark
    jars (:func:`delta_jars_for`); a cluster's, Databricks' or a remote server's session has its own.
    ``s3a``: a location is on S3 (``segspark.io.storage.s3a_conf``): a session this call starts loads
    Hadoop's S3A connector with these ``fs.s3a`` settings (:func:`s3a_conf`); an active local session
    gets the settings it lacks at run time. ``tx_bytes``: the transaction input's bytes on a local disk
    (None: unknown), from which ``spark.jit: auto`` chooses a local session's JIT (:func:`jit_choice`).
    """
    from pyspark.sql import SparkSession

    # Workers must run the driver's interpreter, or pandas UDFs fail on a different Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    if cfg.remote:
        return _connect_session(cfg, owned=owned, delta=delta, s3a=s3a, tx_bytes=tx_bytes)

    existing = active_session()
    if existing is None and "DATABRICKS_RUNTIME_VERSION" in os.environ:
        # a Databricks job or serverless task: the platform's session exists but need not be the
        # active one of this thread; the builder returns it (never a local one)
        existing = SparkSession.builder.getOrCreate()
    if existing is not None:
        apply_job_conf(existing, runtime_sql_conf(local_conf(cfg, master="existing")))  # JOB_CONF too
        _apply_s3a_runtime(existing, s3a)
        for key, value in cfg.conf.items():
            try:
                existing.conf.set(key, value)
            except Exception as exc:  # a managed platform refuses some settings: say which, go on
                log.warning("spark: cannot set %s on this session (%s)", key, str(exc).splitlines()[0])
        return existing

    if _launched_jvm():
        return _submitted_session(cfg, owned=owned)
    check_java()
    if cfg.master.startswith("local"):
        # a local session needs no routable address; avoids the loopback-hostname warning
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    machine = detect_machine()
    settings = local_conf(cfg, machine, quick_jit=_quick_jit(cfg, tx_bytes))
    settings.update(delta_conf(cfg, delta, delta_tasks(settings, cfg.master, machine)))
    settings.update(s3a_conf(cfg, s3a, settings.get("spark.jars", "")))
    for key, value in settings.items():
        builder = builder.config(key, value)
    _log_sizes(settings, cfg.master, machine)
    spark = builder.getOrCreate()
    if owned:
        _OWNED.append(spark)
    return spark


def _connect_session(
    cfg: SparkConfig,
    *,
    owned: bool,
    delta: DeltaJars,
    s3a: Mapping[str, str] | None = None,
    tx_bytes: int | None = None,
) -> SparkSession:
    """A Spark Connect session: a local server this process starts (sized like a local session,
    Delta's jars as ``delta`` says), or a remote server's (the job's runtime SQL settings applied)."""
    from pyspark.sql import SparkSession

    assert cfg.remote is not None
    builder = SparkSession.builder.remote(cfg.remote).appName(cfg.app_name)
    if cfg.remote.startswith("local"):
        # pyspark starts the local Connect server as a classic session in this process: static
        # settings (heap, JVM options) apply to it, and only runtime ones are passed on to the client
        check_java()
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        machine = detect_machine()
        settings = local_conf(cfg, machine, quick_jit=_quick_jit(cfg, tx_bytes))
        settings.update(delta_conf(cfg, delta, delta_tasks(settings, cfg.remote, machine)))
        settings.update(s3a_conf(cfg, s3a, settings.get("spark.jars", "")))
        _log_sizes(settings, cfg.remote, machine)
    else:
        # a remote server was started with its own static settings; the job's runtime SQL ones
        # are applied below, and the user's own runtime ones are passed on
        settings = {
            key: value
            for key, value in cfg.conf.items()
            # static settings cannot be set from a Connect client
            if not key.startswith(("spark.driver.", "spark.executor.", "spark.hadoop.", "spark.ui."))
        }
    for key, value in settings.items():
        builder = builder.config(key, value)
    log.info("connecting to Spark Connect at %s", cfg.remote)
    with warnings.catch_warnings():
        # pyspark also replays the local server's static settings on the client session, which
        # refuses them with a warning each; the server started with them, so the refusal is noise
        static = r"Failed to set spark\..* due to \[CANNOT_MODIFY_(STATIC_)?CONFIG\]"
        warnings.filterwarnings("ignore", message=static, category=UserWarning)
        session = builder.getOrCreate()
    if not cfg.remote.startswith("local"):  # a local server was built with all of local_conf
        apply_job_conf(session, runtime_sql_conf(local_conf(cfg, master="remote")))
    if owned:
        _OWNED.append(session)
    return session


def delta_tasks(settings: Mapping[str, str], master: str, machine: Machine) -> str | None:
    """The tasks Delta splits a table's log replay and file listing into in a local session: one per
    task thread, never more than the shuffle partitions. Every read of a table runs a Delta job over
    its cached log state, in as many tasks as the state was built in: a 600-customer demo on 2 threads
    spent 19.0 s in its 78 file-filtering jobs at 8 tasks each, 8.7 s at 2 (the run 121.2 -> 108.0 s)."""
    partitions = settings.get("spark.sql.shuffle.partitions")
    threads = local_threads(master, machine.cores)
    if partitions is None or not partitions.isdigit() or threads is None:
        return partitions
    return str(min(int(partitions), threads))


def delta_conf(cfg: SparkConfig, delta: DeltaJars, partitions: str | None = None) -> dict[str, str]:
    """The settings that load Delta's Spark jars into a local session (``delta_jars``), or none.

    ``require``: without them (no network, no repository holding them) a ``ConfigError`` (exit 2)
    naming the setting and what is missing. Jars the user loads in ``spark.conf`` are left as given."""
    if delta == "off" or delta_jars.user_supplies_delta(cfg.conf):
        return {}
    try:
        coords, jars = delta_jars.resolve(cfg.conf)
    except delta_jars.DeltaJarsUnavailable as exc:
        raise ConfigError(f"lakehouse.engine: delta-spark needs Delta's Spark jars: {exc}") from None
    log.info("spark: Delta's Spark jars %s (%d files, resolved once and cached)", coords, len(jars))
    return delta_jars.session_conf(jars, cfg.conf, partitions)


def s3a_conf(cfg: SparkConfig, s3a: Mapping[str, str] | None, jars: str = "") -> dict[str, str]:
    """The settings that load Hadoop's S3A connector into a session the job starts, or none.

    ``s3a``: the ``fs.s3a`` settings (endpoint, region, addressing, TLS, credentials provider), set as
    ``spark.hadoop.*`` unless ``spark.conf`` sets them; ``jars``: the session's ``spark.jars`` so far,
    to which the connector's jars (``delta_jars.resolve_s3a``, cached) are added unless the user loads
    it. Without them: a ``ConfigError`` (exit 2) naming what is missing."""
    if s3a is None:
        return {}
    out = {f"spark.hadoop.{k}": v for k, v in s3a.items() if f"spark.hadoop.{k}" not in cfg.conf}
    if delta_jars.user_supplies_s3a(cfg.conf):
        return out
    try:
        coords, found = delta_jars.resolve_s3a(cfg.conf)
    except delta_jars.JarsUnavailable as exc:
        raise ConfigError(f"a path on s3a:// needs Hadoop's S3A connector (hadoop-aws): {exc}") from None
    log.info("spark: Hadoop's S3A connector %s (%d files, resolved once and cached)", coords, len(found))
    out["spark.jars"] = ",".join(x for x in (jars, *found) if x)
    return out


def _apply_s3a_runtime(spark: SparkSession, s3a: Mapping[str, str] | None) -> None:
    """The ``fs.s3a`` settings an active local session lacks (a notebook's or a test suite's), set at
    run time: data sources and Delta read Hadoop settings from the session. A cluster's or Databricks'
    file systems are their own: left alone."""
    master = spark.conf.get("spark.master", "") or ""
    if not s3a or not master.startswith("local") or "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return
    for key, value in s3a.items():
        if spark.conf.get(f"spark.hadoop.{key}", None) is None and spark.conf.get(key, None) is None:
            spark.conf.set(key, value)


def sizes_shuffle_partitions(cfg: SparkConfig) -> bool:
    """Whether the job sizes the shuffle partitions from the input (``spark.shuffle_partitions:
    auto``, not set in ``spark.conf``, not on Databricks, whose platform sizes its own)."""
    return not (
        cfg.shuffle_partitions != "auto"
        or "spark.sql.shuffle.partitions" in cfg.conf
        or "DATABRICKS_RUNTIME_VERSION" in os.environ
    )


def scale_shuffle_partitions(spark: SparkSession, cfg: SparkConfig, rows: int) -> int | None:
    """Raise the shuffle partitions to ``rows / ROWS_PER_PARTITION`` for an input of ``rows`` rows
    when the job sizes them (:func:`sizes_shuffle_partitions`); never lowers them. Returns the new
    count, or None. Adaptive execution still merges the partitions a smaller intermediate table
    leaves small."""
    if not sizes_shuffle_partitions(cfg):
        return None
    current = int(spark.conf.get("spark.sql.shuffle.partitions") or MIN_PARTITIONS)
    wanted = math.ceil(rows / ROWS_PER_PARTITION)
    if wanted <= current:
        return None
    spark.conf.set("spark.sql.shuffle.partitions", str(wanted))
    log.info("spark: %d shuffle partitions for %d input rows (was %d)", wanted, rows, current)
    return wanted


def _submitted_session(cfg: SparkConfig, *, owned: bool) -> SparkSession:
    """The session of a job spark-submit launched: its ``--master`` and JVM sizes hold.

    ``spark.master`` in the job's config is for sessions the job starts itself; under spark-submit
    the master is already chosen (a cluster's, or ``local[*]`` by default), so it is read back from
    the session and the shuffle partitions are sized for it (a runtime setting) after the start.
    """
    from pyspark.sql import SparkSession

    machine = detect_machine()
    builder = SparkSession.builder.appName(cfg.app_name)
    for key, value in local_conf(cfg, machine, master="submitted").items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    master = spark.conf.get("spark.master", None) or "submitted"
    sized = local_conf(cfg, machine, master=master)
    partitions = sized.get("spark.sql.shuffle.partitions")
    if partitions is not None:
        spark.conf.set("spark.sql.shuffle.partitions", partitions)
    _log_sizes(sized, master, machine)
    if owned:
        _OWNED.append(spark)
    return spark


@contextlib.contextmanager
def finalizers_at_safe_points() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while MLlib models are fitted over Spark Connect.

    A Connect model's finalizer sends an RPC that frees its server-side cache. When the cyclic
    collector runs that finalizer in the middle of another RPC on the same thread, the client waits
    on itself for ever (seen: ``DataFrame.collect`` blocked in ``_delete_ml_cache``). Paused during
    the fit, the collector runs once after it, outside any RPC. Classic sessions are left alone.
    """
    from pyspark.sql.utils import is_remote

    if not is_remote() or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()
