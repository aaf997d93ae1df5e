"""Start and stop real Spark processes for deployment tests: a standalone master and workers, servers.

Every process runs from the pyspark package's own Spark (its ``bin/spark-class``; no separate Spark
download), listens on 127.0.0.1 only, logs into a folder the caller owns, and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segspark.session import QUICK_JIT_OPTIONS as QUICK_JIT

LOOPBACK = "127.0.0.1"


def spark_home() -> Path:
    """The pyspark package's own Spark: its ``bin/`` and ``jars/`` are a complete Spark runtime."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def free_port() -> int:
    """A TCP port free on the loopback address right now (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def spark_env(base: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Spark process: loopback only, small daemon heaps, logs and work under ``base``.

    Variables of a Spark or PySpark process this test runs inside (gateway ports, a driver's Python)
    are left out: each started process is what a user's shell would start.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_", "SPARK_", "_SPARK")) and k != "PYTHONPATH"
    }
    env.update(
        {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": LOOPBACK,
            "SPARK_LOCAL_HOSTNAME": LOOPBACK,
            "SPARK_DAEMON_MEMORY": "256m",
            "SPARK_LOG_DIR": str(base / "logs"),
            "SPARK_WORKER_DIR": str(base / "work"),
            "SPARK_PID_DIR": str(base / "pids"),
            # scratch space (shuffle files, fetched --archives before unpacking) under base, not /tmp
            "SPARK_LOCAL_DIRS": str(base / "local"),
            # the master's REST submission server listens on the fixed port 6066 by default: off, so
            # two clusters (two test runs) never collide and nothing listens that the tests do not use
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
            # every JVM of the test's cluster (master, workers and the executors a worker launches
            # with its environment) runs a short job: HotSpot's client compiler only, as the job
            # chooses for a short local run (spark.jit: quick). The driver, spark-submit's, is the job's
            "JAVA_TOOL_OPTIONS": QUICK_JIT,
        }
    )
    env.update(extra or {})
    return env


@dataclass
class SparkProcess:
    """One started JVM: its pid, the ports it was given and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _spark_class(name: str, cls: str, args: list[str], base: Path, env: Mapping[str, str]) -> SparkProcess:
    (base / "logs").mkdir(parents=True, exist_ok=True)
    (base / "work").mkdir(parents=True, exist_ok=True)
    log = base / "logs" / f"{name}.log"
    with log.open("wb") as out:
        # spark-class execs the JVM, so the pid is the JVM's; a new session gives it its own
        # process group, which stop_pid ends with everything the JVM started (executors, Python workers)
        proc = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), cls, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=str(base),
            start_new_session=True,
        )
    return SparkProcess(name=name, proc=proc, log=log)


def start_master(base: Path, *, port: int | None = None, webui_port: int | None = None) -> SparkProcess:
    """A standalone master on 127.0.0.1; ``ports`` holds ``port`` (spark://) and ``webui`` (JSON status)."""
    port = port or free_port()
    webui_port = webui_port or free_port()
    sp = _spark_class(
        "master",
        "org.apache.spark.deploy.master.Master",
        ["--host", LOOPBACK, "--port", str(port), "--webui-port", str(webui_port)],
        base,
        spark_env(base),
    )
    sp.ports = {"port": port, "webui": webui_port}
    return sp


def master_url(master: SparkProcess) -> str:
    return f"spark://{LOOPBACK}:{master.ports['port']}"


def master_json_url(master: SparkProcess) -> str:
    return f"http://{LOOPBACK}:{master.ports['webui']}/json/"


def start_worker(
    base: Path,
    master: str,
    *,
    name: str = "worker",
    cores: int = 1,
    memory: str = "1536m",
    webui_port: int | None = None,
) -> SparkProcess:
    """A standalone worker on 127.0.0.1 registering with ``master`` (a spark:// URL); own work dir."""
    webui_port = webui_port or free_port()
    port = free_port()
    work = base / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    sp = _spark_class(
        name,
        "org.apache.spark.deploy.worker.Worker",
        [
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--webui-port",
            str(webui_port),
            "--cores",
            str(cores),
            "--memory",
            memory,
            "--work-dir",
            str(work),
            master,
        ],
        base,
        spark_env(base),
    )
    sp.ports = {"port": port, "webui": webui_port}
    return sp


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid`` (children first found, then theirs), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def stop_pid(pid: int, *, timeout: float = 30.0) -> None:
    """Stop the process ``pid`` and what it started: SIGTERM (Spark's shutdown hooks run), then SIGKILL.

    Its descendants are collected first and stopped too, so an executor a worker launched cannot
    outlive the worker even when the worker dies before it could stop it.
    """
    if not alive(pid):
        return
    tree = [pid, *descendants(pid)]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        _reap(tree)
        time.sleep(0.2)
    for p in tree:
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    _reap(tree)


def _reap(pids: list[int]) -> None:
    """Collect the exit status of those of ``pids`` that are this process's children (no zombies left)."""
    for p in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p, os.WNOHANG)


def stop(procs: list[SparkProcess]) -> None:
    """Stop started processes, last started first (workers before their master)."""
    for sp in reversed(procs):
        stop_pid(sp.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            sp.proc.wait(timeout=5)


def http_json(url: str, timeout: float = 5.0) -> Any:
    if not url.startswith(f"http://{LOOPBACK}:"):  # tests contact nothing but this machine
        raise ValueError(f"not a loopback URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def wait_http_json(
    url: str,
    until: Callable[[Any], bool],
    *,
    timeout: float = 120.0,
    procs: list[SparkProcess] | None = None,
) -> Any:
    """Poll ``url`` (JSON on 127.0.0.1) until ``until(document)`` holds; return that document.

    Fails early, with the process's log, when one of ``procs`` exits while waiting.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: Exception | None = None
    while time.monotonic() < deadline:
        for sp in procs or []:
            if sp.proc.poll() is not None:
                raise RuntimeError(f"{sp.name} exited with {sp.proc.returncode}:\n{sp.log_tail()}")
        try:
            last = http_json(url)
            if until(last):
                return last
        except (OSError, ValueError) as exc:  # not listening yet
            error = exc
        time.sleep(0.5)
    logs = "\n".join(f"--- {sp.name}\n{sp.log_tail()}" for sp in procs or [])
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s (last: {last!r}, error: {error!r})\n{logs}")


def alive_workers(master_status: Any) -> list[dict[str, Any]]:
    return [w for w in master_status.get("workers", []) if w.get("state") == "ALIVE"]


def start_standalone_cluster(
    base: Path, *, workers: int = 2, cores: int = 1, memory: str = "1536m", timeout: float = 120.0
) -> tuple[SparkProcess, list[SparkProcess]]:
    """A master and ``workers`` workers, returned once every worker is ALIVE in the master's JSON.

    On any failure while starting, whatever was started is stopped before the error propagates.
    """
    started: list[SparkProcess] = []
    try:
        master = start_master(base)
        started.append(master)
        wait_http_json(
            master_json_url(master), lambda doc: doc.get("status") == "ALIVE", procs=started, timeout=timeout
        )
        for i in range(workers):
            started.append(
                start_worker(base, master_url(master), name=f"worker-{i + 1}", cores=cores, memory=memory)
            )
        wait_http_json(
            master_json_url(master),
            lambda doc: len(alive_workers(doc)) == workers,
            procs=started,
            timeout=timeout,
        )
    except BaseException:
        stop(started)
        raise
    return master, started[1:]


def processes_under(base: Path) -> list[str]:
    """``ps`` lines of live processes whose command line or working directory lies under ``base``.

    Every process a test's cluster starts (master, workers, executors in the workers' work dirs, their
    Python workers) has one or the other there: an empty list after teardown means none is left.
    """
    root = str(base.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (root in cmdline or cwd == root or cwd.startswith(root + os.sep)) and alive(int(entry.name)):
            found.append(f"{entry.name} {cwd} {cmdline[:300]}")
    return found
