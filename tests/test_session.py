from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segspark.errors import EnvironmentProblem
from segspark.session import check_java

REPO = Path(__file__).resolve().parents[1]


def test_java_version_is_detected() -> None:
    assert check_java() in (17, 21)


def test_missing_java_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojava"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match="no Java runtime found: install a Java 17 or 21"):
        check_java()


def test_wrong_java_version_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match=r"Java 11 found .* needs Java 17 or 21"):
        check_java()


def test_cli_reports_missing_java_without_a_stack_trace(tmp_path: Path) -> None:
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "none"), "PATH": f"{Path(sys.executable).parent}"}
    (tmp_path / "tx" / "_delta_log").mkdir(parents=True)  # an input the preflight accepts: Spark is next
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segspark",
            "run",
            "--set",
            f"input.transactions.path={tmp_path / 'tx'}",
            "--set",
            f"output.path={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("segspark:")]
    assert lines == [
        "segspark: error: no Java runtime found: install a Java 17 or 21 runtime "
        "(e.g. 'apt-get install openjdk-17-jre-headless') and set JAVA_HOME"
    ]
    assert "Traceback" not in proc.stderr


def test_no_spark_context_rdd_or_jvm_in_the_package() -> None:
    import re

    pattern = re.compile(r"\.(sparkContext|rdd|_jvm)\b|\bSparkContext\b")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in [*(REPO / "segspark").rglob("*.py"), *(REPO / "jobs").rglob("*.py")]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


# ---- sizing the embedded session -------------------------------------------------------------------
GIB = 1 << 30
LAPTOP_24G = 25_276_510_208  # what a 24 GB machine reports (SC_PHYS_PAGES x page size)


@pytest.mark.parametrize(
    ("cores", "memory", "heap", "partitions"),
    [
        (2, LAPTOP_24G, "14g", "8"),  # 0.6 x 23.54 GiB = 14.1 GiB -> whole gigabytes; 4 x 2 < 8 -> 8
        (16, 64 * GIB, "31g", "64"),  # 38.4 GiB capped below 32g (compressed pointers); 4 x 16
        (1, 1 * GIB, "1024m", "8"),  # 614 MiB raised to the 1g floor
        (4, 3 * GIB, "1843m", "16"),  # 0.6 x 3072 MiB = 1843.2 MiB, under 2g: in megabytes
        (3, 10 * GIB, "6g", "12"),
    ],
)
def test_auto_sizes_on_known_machines(cores: int, memory: int, heap: str, partitions: str) -> None:
    from segspark.session import sized_conf

    expected = {"spark.driver.memory": heap, "spark.sql.shuffle.partitions": partitions}
    assert sized_conf(cores, memory) == expected


def test_given_sizes_are_used_and_spark_conf_entries_win() -> None:
    from segspark.session import sized_conf

    given = sized_conf(2, LAPTOP_24G, driver_memory="6g", shuffle_partitions=3)
    assert given == {"spark.driver.memory": "6g", "spark.sql.shuffle.partitions": "3"}
    explicit = {"spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "5"}
    assert sized_conf(2, LAPTOP_24G, driver_memory="6g", shuffle_partitions=3, conf=explicit) == explicit
    assert sized_conf(2, LAPTOP_24G, conf={"spark.driver.memory": "3g"}) == {
        "spark.driver.memory": "3g",
        "spark.sql.shuffle.partitions": "8",
    }


@pytest.mark.parametrize(
    ("master", "threads"),
    [
        ("local", 1),
        ("local[*]", 6),
        ("local[3]", 3),
        ("local[2, 4]", 2),
        ("spark://h:7077", None),
        ("yarn", None),
        ("local-cluster[2,1,1024]", None),
    ],
)
def test_local_threads_follow_the_master(master: str, threads: int | None) -> None:
    from segspark.session import local_threads

    assert local_threads(master, 6) == threads


def test_deltas_log_tasks_are_one_per_task_thread_and_at_most_the_shuffle_partitions(spark) -> None:
    from segspark.session import Machine, delta_tasks

    laptop = Machine(cores=2, memory_bytes=LAPTOP_24G, memory_source="physical")
    eight = {"spark.sql.shuffle.partitions": "8"}
    assert delta_tasks(eight, "local[*]", laptop) == "2"
    assert delta_tasks(eight, "local[16]", laptop) == "8"
    assert delta_tasks({"spark.sql.shuffle.partitions": "2"}, "local[4]", laptop) == "2"
    assert delta_tasks(eight, "spark://h:7077", laptop) == "8"  # not a local session: as given
    # the suite's session (local[2]) was started with them
    assert spark.conf.get("spark.databricks.delta.snapshotPartitions") == "2"


def test_local_conf_sizes_local_sessions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from segspark.config import SparkConfig
    from segspark.session import Machine, local_conf

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    machine = Machine(cores=6, memory_bytes=32 * GIB, memory_source="physical")
    local = local_conf(SparkConfig(master="local[*]"), machine)
    assert (local["spark.driver.memory"], local["spark.sql.shuffle.partitions"]) == ("19g", "24")
    # the Connect server pyspark starts for a local remote is the job's own session too
    connect = local_conf(SparkConfig(remote="local[2]"), machine)
    assert (connect["spark.driver.memory"], connect["spark.sql.shuffle.partitions"]) == ("19g", "8")
    # a cluster manager sizes the session: nothing set unless asked for
    cluster = local_conf(SparkConfig(master="spark://h:7077"), machine)
    assert "spark.driver.memory" not in cluster and "spark.sql.shuffle.partitions" not in cluster
    asked = local_conf(SparkConfig(master="yarn", driver_memory="8G", shuffle_partitions=400), machine)
    assert (asked["spark.driver.memory"], asked["spark.sql.shuffle.partitions"]) == ("8g", "400")
    wins = local_conf(SparkConfig(driver_memory="8g", conf={"spark.driver.memory": "5g"}), machine)
    assert wins["spark.driver.memory"] == "5g"
    # started by spark-submit: the JVM's heap is already fixed, so auto must not claim a size
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "12345")
    assert "spark.driver.memory" not in local_conf(SparkConfig(), machine)


def test_the_job_s_sessions_record_no_python_call_site_per_column_call(spark) -> None:
    """PySpark's DataFrame debugging (a JVM round trip per Column call) is off in the sessions the job
    starts, the suite's included; a user's ``spark.conf`` turns it back on."""
    from pyspark.errors.utils import is_debugging_enabled

    from segspark.config import SparkConfig
    from segspark.session import local_conf

    key = "spark.python.sql.dataFrameDebugging.enabled"
    assert spark.conf.get(key) == "false" and not is_debugging_enabled()
    assert local_conf(SparkConfig(master="spark://h:7077"))[key] == "false"
    assert local_conf(SparkConfig(conf={key: "true"}))[key] == "true"


def test_a_short_local_run_compiles_with_the_client_compiler_only(tmp_path: Path, spark) -> None:
    """``spark.jit: auto``: quick (HotSpot's C1 only) for a small transaction input on a local disk,
    the JVM's default tiers for a large one or one whose size Spark alone can tell; the option goes
    first in the driver's JVM options and keeps the job's own; the suite's session runs with it."""
    from segspark.config import SparkConfig, load_settings
    from segspark.errors import ConfigError
    from segspark.session import (
        QUICK_JIT_CODE_CACHE,
        QUICK_JIT_MAX_TX_BYTES,
        QUICK_JIT_OPTION,
        Machine,
        jit_choice,
        local_bytes,
        local_conf,
        session_jit,
    )

    folder = tmp_path / "transactions"
    (folder / "_delta_log").mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(b"x" * 1000)
    (folder / "_delta_log" / "00000000000000000000.json").write_bytes(b"y" * 24)
    assert local_bytes(str(folder)) == local_bytes(f"file://{folder}") == 1024
    assert local_bytes("s3a://bucket/transactions") is None and local_bytes(str(tmp_path / "nope")) is None
    assert jit_choice("auto", 1024)[0] == "quick"
    assert jit_choice("auto", QUICK_JIT_MAX_TX_BYTES + 1) == ("full", "transactions 8.0 MiB > 8 MiB")
    assert jit_choice("auto", None)[0] == "full"
    assert jit_choice("full", 1024) == ("full", "spark.jit: full")
    assert jit_choice("quick", None)[0] == "quick"

    machine = Machine(cores=2, memory_bytes=8 * GIB, memory_source="physical")
    quick = local_conf(SparkConfig(), machine, quick_jit=True)["spark.driver.extraJavaOptions"].split()
    default = local_conf(SparkConfig(), machine)["spark.driver.extraJavaOptions"].split()
    # C1 alone would size the code cache at 48 MB, which the plans of a long session fill
    assert quick == [QUICK_JIT_OPTION, QUICK_JIT_CODE_CACHE, *default] and QUICK_JIT_OPTION not in default
    with pytest.raises(ConfigError, match=r"spark\.jit"):
        load_settings(None, ["spark.jit=fast"])
    assert session_jit(spark) == "quick"  # tests/conftest.py asks for it: the suite is all short runs


def test_config_takes_auto_null_or_a_size() -> None:
    from segspark.config import load_settings
    from segspark.errors import ConfigError

    assert load_settings([], []).spark.driver_memory == "auto"
    assert load_settings([], []).spark.shuffle_partitions == "auto"
    old = load_settings([], ["spark.driver_memory=null", "spark.shuffle_partitions=null"]).spark
    assert (old.driver_memory, old.shuffle_partitions) == ("auto", "auto")
    given = load_settings([], ["spark.driver_memory=12G", "spark.shuffle_partitions=40"]).spark
    assert (given.driver_memory, given.shuffle_partitions) == ("12g", 40)
    with pytest.raises(ConfigError, match=r"spark\.driver_memory.*neither auto nor a JVM size"):
        load_settings([], ["spark.driver_memory=1.5g"])
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions.*neither auto nor a number"):
        load_settings([], ["spark.shuffle_partitions=0"])


def test_container_limits_are_read_from_cgroup_files(tmp_path: Path) -> None:
    from segspark.session import detect_machine

    affinity = len(os.sched_getaffinity(0))
    proc = tmp_path / "cgroup"
    # cgroup v2: the process's own group holds the limits
    (tmp_path / "v2" / "job").mkdir(parents=True)
    (tmp_path / "v2" / "job" / "memory.max").write_text(f"{4 * GIB}\n")
    (tmp_path / "v2" / "job" / "cpu.max").write_text("100000 100000\n")
    proc.write_text("0::/job\n")
    v2 = detect_machine(tmp_path / "v2", proc)
    assert (v2.cores, v2.memory_bytes, v2.memory_source) == (1, 4 * GIB, "cgroup limit")
    # cgroup v1: unlimited is written as about 2^63, and a quota of -1 means none
    (tmp_path / "v1" / "memory").mkdir(parents=True)
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/\n3:cpu,cpuacct:/\n")
    v1 = detect_machine(tmp_path / "v1", proc)
    assert (v1.cores, v1.memory_source) == (affinity, "physical")
    assert v1.memory_bytes == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    assert detect_machine(tmp_path / "v1", proc).memory_bytes == 2 * GIB


# Started in a child process (one JVM per process, and the suite's session already has one): the
# session the factory builds, its conf and the -Xmx of the JVM it launched (read from /proc, so no
# JVM gateway is needed), and the factory's one INFO line.
SESSION_PROBE = """
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from segspark.config import SparkConfig
from segspark.session import detect_machine, get_spark, local_threads, sized_conf, stop_owned

cfg = SparkConfig.model_validate(json.loads(sys.argv[1]))
spark = get_spark(cfg)

def children(pid):
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read() if entry.isdigit() else ""
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                yield int(entry)
        except OSError:
            pass

heap, todo = [], [os.getpid()]
while todo:
    for child in children(todo.pop()):
        todo.append(child)
        heap += [a[4:] for a in open(f"/proc/{child}/cmdline").read().split("\\0") if a.startswith("-Xmx")]
machine = detect_machine()
threads = local_threads(cfg.remote or cfg.master, machine.cores)
print(json.dumps({
    "conf": spark.conf.get("spark.driver.memory"),
    "partitions": spark.conf.get("spark.sql.shuffle.partitions"),
    "xmx": heap,
    "expected": sized_conf(threads, machine.memory_bytes),
}))
stop_owned()
"""


def _probe(cfg: dict[str, object]) -> tuple[dict[str, object], str]:
    import json

    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_GATEWAY_PORT"}
    proc = subprocess.run(
        [sys.executable, "-c", SESSION_PROBE, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_embedded_session_starts_with_the_machine_sized_heap() -> None:
    result, stderr = _probe({"master": "local[1]"})
    expected = result["expected"]
    assert isinstance(expected, dict)
    heap = expected["spark.driver.memory"]
    assert heap.endswith("g") or heap.endswith("m")
    assert result["conf"] == heap
    assert result["xmx"] == [heap]  # the JVM really got it: -Xmx of the launched java process
    assert result["partitions"] == expected["spark.sql.shuffle.partitions"]
    sizes = [line for line in stderr.splitlines() if "driver heap" in line]
    assert len(sizes) == 1 and f"driver heap {heap}, " in sizes[0], sizes


@pytest.mark.slow
def test_local_connect_server_gets_the_explicit_heap_from_spark_conf() -> None:
    result, stderr = _probe(
        {
            "remote": "local[1]",
            "driver_memory": "3g",
            "shuffle_partitions": 3,
            "conf": {"spark.driver.memory": "1200m"},
        }
    )
    assert result["conf"] == "1200m"
    assert result["xmx"] == ["1200m"]
    assert result["partitions"] == "3"
    assert "Failed to set" not in stderr


def test_missing_pyspark_is_one_clear_line_naming_the_extra() -> None:
    # the wheel leaves PySpark to the platform; without it the CLI says what to install, no traceback
    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "from segspark.cli import main\n"
        "raise SystemExit(main(['run']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "PySpark is not installed: pip install 'segspark[spark]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_shuffle_partitions_grow_with_the_input_only_when_the_job_sizes_them(spark) -> None:
    from segspark.config import SparkConfig
    from segspark.session import ROWS_PER_PARTITION, scale_shuffle_partitions

    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        spark.conf.set("spark.sql.shuffle.partitions", "4")
        auto = SparkConfig()
        assert scale_shuffle_partitions(spark, auto, 4 * ROWS_PER_PARTITION) is None  # never lowers
        assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
        # a user's choice holds: a given count, or the setting in spark.conf
        fixed = SparkConfig(shuffle_partitions=4)
        assert scale_shuffle_partitions(spark, fixed, 50 * ROWS_PER_PARTITION) is None
        given = SparkConfig(conf={"spark.sql.shuffle.partitions": "4"})
        assert scale_shuffle_partitions(spark, given, 50 * ROWS_PER_PARTITION) is None
        assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
        # 100M lines: 50 partitions of 2M lines
        assert scale_shuffle_partitions(spark, auto, 50 * ROWS_PER_PARTITION - 1) == 50
        assert spark.conf.get("spark.sql.shuffle.partitions") == "50"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)


def test_readmes_delta_packages_are_the_installed_delta_spark_for_this_spark() -> None:
    """README's spark-submit line names the Delta jars the installed Python packages need: Delta's own
    rule (``delta.pip_utils.configure_spark_with_delta_pip``): ``delta-spark_<spark major.minor>_2.13``
    at the version of the ``delta-spark`` package."""
    import importlib.metadata

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    wanted = f"io.delta:delta-spark_{spark_minor}_2.13:{importlib.metadata.version('delta_spark')}"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"--packages (io\.delta:\S+)", readme) == [wanted]


def test_delta_jar_coordinates_are_the_ones_delta_pip_names() -> None:
    """The session loads what delta-spark's own ``configure_spark_with_delta_pip`` would ask Maven for."""
    from delta.pip_utils import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    from segspark import delta_jars

    builder = configure_spark_with_delta_pip(SparkSession.builder)
    assert builder._options["spark.jars.packages"] == delta_jars.coordinates()


def _offline_resolver(tmp_path: Path) -> str:
    """``spark.conf`` of a machine that cannot fetch Delta's jars: an empty Ivy cache and one empty
    local repository (no network resolver)."""
    repo = tmp_path / "empty-repo"
    repo.mkdir()
    settings = tmp_path / "ivysettings.xml"
    settings.write_text(
        '<ivysettings><settings defaultResolver="offline"/><resolvers><filesystem name="offline">'
        f'<artifact pattern="{repo}/[organisation]/[module]/[revision]/[artifact]-[revision].[ext]"/>'
        "</filesystem></resolvers></ivysettings>",
        encoding="utf-8",
    )
    return f"spark.conf={{spark.jars.ivy: {tmp_path / 'ivy'}, spark.jars.ivySettings: {settings}}}"


def _generate(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "data"
    args = ["generate", "--customers", "20", "--out", str(out)]
    return subprocess.run(
        [sys.executable, "-m", "segspark", *args, *[x for s in sets for x in ("--set", s)]],
        capture_output=True,
        text=True,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "XDG_CACHE_HOME": str(tmp_path / "cache")},
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.slow
def test_auto_starts_a_local_session_without_delta_jars_and_says_why_in_one_line(tmp_path: Path) -> None:
    """A local run on ``auto`` writes with the embedded engine (the faster one on one machine) and fetches
    nothing: with a resolver that cannot fetch, no resolution is tried, no error or Ivy report is said."""
    proc = _generate(tmp_path, _offline_resolver(tmp_path), "spark.master=local[1]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "lakehouse engine:" in line]
    assert len(said) == 1, proc.stderr[-3000:]
    assert said[0].endswith(
        "lakehouse engine: delta-rs (auto: Delta's Spark jars are not loaded in this session; a local "
        "session loads them only for lakehouse.engine: delta-spark)"
    ), said
    assert "unavailable" not in proc.stderr and "io.delta:delta-spark" not in proc.stderr
    assert "Traceback" not in proc.stderr and ":: resolution report ::" not in proc.stderr
    assert not (tmp_path / "ivy").exists()  # the resolver was never started
    assert (tmp_path / "data" / "transactions" / "_delta_log").is_dir()


@pytest.mark.slow
def test_delta_spark_engine_without_its_jars_is_exit_2_naming_the_setting(tmp_path: Path) -> None:
    proc = _generate(tmp_path, _offline_resolver(tmp_path), "lakehouse.engine=delta-spark")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("segspark:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(
        "segspark: configuration error: lakehouse.engine: delta-spark needs Delta's Spark jars: cannot fetch "
        "io.delta:delta-spark_"
    ), lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "transactions").exists()


def test_parameterized_sql_binds_behind_deltas_parser(spark) -> None:
    """The job's SQL files take ``:name`` parameters; a parser an extension injects (Delta's, which this
    session loads) dropped them on Spark 4.2 (UNBOUND_SQL_PARAMETER) until the job's settings bound
    them in analysis."""
    assert "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")
    df = spark.range(3)
    query = "WITH a AS (SELECT * FROM {t}) SELECT * FROM a WHERE :flag OR id = :one"
    assert spark.sql(query, args={"flag": False, "one": 1}, t=df).count() == 1


def test_auto_probes_for_delta_only_where_added_jars_may_hold_it(spark) -> None:
    """``lakehouse.engine: auto`` asks Spark for Delta's data source (a lookup of every registered source,
    2-4 s on a fresh JVM) only when the session adds jars to its class path: the suite's session lists
    Delta's in ``spark.jars``, so it may hold them; a plain local session (``pip install pyspark``, the
    job's own session on ``auto``: ``test_auto_starts_a_local_session_without_delta_jars...``) adds none
    and has no Delta jar among Spark's own, so the answer is known without the lookup."""
    from segspark.io.delta_spark import _classpath_may_hold_delta

    assert "delta" in (spark.conf.get("spark.jars", "") or "")
    assert _classpath_may_hold_delta(spark)
    import pyspark

    spark_jars = Path(os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__), "jars")
    assert spark_jars.is_dir() and not list(spark_jars.glob("delta*.jar"))
