"""A real S3-compatible object store for the tests: Versity's S3 gateway (versitygw) over a local folder.

versitygw (Apache-2.0) is an S3 server in Go that serves a POSIX folder as buckets (one folder a bucket,
one file an object, metadata in extended attributes): list, put, get, delete, multipart upload and
conditional writes (``If-None-Match: *``, what delta-rs's safe commit uses). It is built once from
the Go module proxy with ``go install`` into ``~/.cache/segspark-test/versitygw-<version>/`` (``.ci/run``
runs ``python tests/s3_server.py install`` before the tests; a second run finds it there), started on
127.0.0.1 on a free port and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
MODULE = "github.com/versity/versitygw/cmd/versitygw"
VERSION = "v1.8.0"
BUILD_TIMEOUT_S = 1800
# the server's root account; the tests put the same in the environment (tests/conftest.py), where
# Spark's S3A, delta-rs and pyarrow read credentials from
ACCESS_KEY = "segspark-test-access"
SECRET_KEY = "segspark-test-secret-not-a-secret"
REGION = "us-east-1"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segspark-test" / f"versitygw-{VERSION}"


def binary() -> Path:
    return cache_dir() / "versitygw"


def install(quiet: bool = False) -> Path:
    """The server's binary: built with ``go install MODULE@VERSION`` on the first call (one build at
    a time on this machine), found in the cache afterwards."""
    target = binary()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the S3 tests build versitygw with Go: install Go 1.25 or newer")
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
            proc = subprocess.run(
                [go, "install", "-trimpath", "-ldflags=-s -w", f"{MODULE}@{VERSION}"],
                env={**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0"},
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"go install {MODULE}@{VERSION} failed:\n{proc.stderr[-3000:]}")
            os.replace(Path(gobin) / "versitygw", target)
        if not quiet:
            print(f"built versitygw {VERSION} in {time.perf_counter() - started:.0f} s: {target}")
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A started server: its endpoint, the folder its buckets live in, its process and log."""

    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by pid, SIGKILL after ``timeout``; reaps the process."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)


def start(base: Path, *, timeout: float = 30.0) -> S3Server:
    """versitygw's posix backend over ``base/buckets`` on 127.0.0.1 (a free port), once it listens."""
    root = base / "buckets"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = base / "versitygw.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VGW_", "ROOT_"))},
        # the root account by environment, not on the command line (where ps shows it)
        "ROOT_ACCESS_KEY_ID": ACCESS_KEY,
        "ROOT_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    command = [str(install()), "--port", f"{LOOPBACK}:{port}", "--region", REGION, "posix", str(root)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=base
        )
    server = S3Server(port=port, root=root, proc=proc, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"versitygw exited with {proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(
                f"versitygw not listening on {port} after {timeout:.0f} s:\n{server.log_tail()}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def running(base: Path) -> Iterator[S3Server]:
    server = start(base)
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit("usage: python tests/s3_server.py install")
    print(install())
