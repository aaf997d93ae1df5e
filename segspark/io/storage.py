"""Where the lakehouse lives: a local folder or an S3 object store, and how each engine reaches it.

Locations are strings, never ``pathlib.Path`` (a Path turns ``s3a://bucket/x`` into ``s3a:/bucket/x``).
Spark names S3 ``s3a://`` (Hadoop's S3A connector); delta-rs and pyarrow name it ``s3://``: a location
is kept as configured and converted where it is handed over (:func:`spark_uri`, :func:`delta_rs_uri`).

Credentials are never part of the configuration: Spark's S3A, delta-rs and pyarrow read
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) from the environment,
or an instance role where there is none. The endpoint and region come from ``lakehouse.s3`` or from
``AWS_ENDPOINT_URL`` / ``AWS_REGION`` (README, "Deploy -> The lakehouse on S3").
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from segspark.errors import ConfigError, InputError, SegsparkError

if TYPE_CHECKING:
    from pyarrow import fs as pafs

    from segspark.config import S3Config, Settings

S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})
ENV_ENDPOINT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ENV_REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
# S3A's provider of credentials from the environment (the AWS SDK v2 class S3A accepts as is)
ENV_CREDENTIALS = "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
# what makes delta-rs's commits safe on S3 (lakehouse.s3.commit): a put that fails when the commit
# file exists (If-None-Match: *, which S3 and most S3-compatible stores honour), a DynamoDB lock
# table, or nothing (one writer at a time, stated by the user)
DELTA_RS_COMMIT = {
    "conditional-put": {"conditional_put": "etag"},
    "dynamodb": {"AWS_S3_LOCKING_PROVIDER": "dynamodb"},
    "single-writer": {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"},
}

# the object-store settings of this process (Lakehouse calls configure): process-wide, like the
# credentials in the environment that go with them
_settings: S3Config | None = None


def configure(cfg: S3Config) -> None:
    """Use ``cfg`` (``lakehouse.s3``) for every object-store location from now on."""
    global _settings
    _settings = cfg


def _cfg() -> S3Config:
    from segspark.config import S3Config

    return _settings or S3Config()


# ---- locations -------------------------------------------------------------------------------------
def scheme(location: str) -> str:
    """The URI scheme of ``location`` in lower case; ``""`` for a plain local path."""
    return urllib.parse.urlparse(location).scheme.lower() if "://" in location else ""


def is_uri(location: str) -> bool:
    return "://" in location


def is_s3(location: str | None) -> bool:
    return bool(location) and scheme(str(location)) in S3_SCHEMES


def root_of(path: str) -> str:
    """``output.path`` as a location: a URI as given (no trailing slash), a local path made absolute."""
    if is_uri(path):
        return path.rstrip("/")
    return str(Path(path).resolve())


def join(root: str, *parts: str) -> str:
    """``root`` with ``parts`` appended, for a URI or a local path."""
    if is_uri(root):
        return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts if p]])
    return str(Path(root, *parts))


def basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def spark_uri(location: str) -> str:
    """``location`` as Spark names it: S3 through Hadoop's S3A connector (``s3a://``)."""
    if scheme(location) in {"s3", "s3n"}:
        return "s3a://" + location.split("://", 1)[1]
    return location


def delta_rs_uri(location: str) -> str:
    """``location`` as delta-rs and pyarrow name it: S3 as ``s3://``."""
    if scheme(location) in {"s3a", "s3n"}:
        return "s3://" + location.split("://", 1)[1]
    return location


# ---- the object store's settings ---------------------------------------------------------------------
def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def endpoint_url() -> str | None:
    """The S3 endpoint (``lakehouse.s3.endpoint``, else ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``);
    None: AWS's own endpoints."""
    return _cfg().endpoint or _first_env(ENV_ENDPOINT)


def region() -> str | None:
    return _cfg().region or _first_env(ENV_REGION)


def path_style() -> bool:
    """Path-style requests (``endpoint/bucket/key``): as configured, else with a custom endpoint
    (S3-compatible servers rarely serve bucket host names)."""
    chosen = _cfg().path_style
    return endpoint_url() is not None if chosen is None else chosen


def delta_rs_options(location: str) -> dict[str, str] | None:
    """delta-rs ``storage_options`` for ``location`` (None for a local path): endpoint, region and
    addressing, the commit safety of ``lakehouse.s3.commit`` and ``lakehouse.s3.delta_rs_options``.
    No credentials: delta-rs reads them from the environment."""
    if not is_s3(location):
        return None
    cfg = _cfg()
    options: dict[str, str] = {}
    endpoint = endpoint_url()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if region():
        options["AWS_REGION"] = str(region())
    options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false" if path_style() else "true"
    options.update(DELTA_RS_COMMIT[cfg.commit])
    options.update(cfg.delta_rs_options)
    return options


def hadoop_conf() -> dict[str, str]:
    """The Hadoop S3A settings of this configuration (keys without ``spark.hadoop.``)."""
    conf = {"fs.s3a.path.style.access": str(path_style()).lower()}
    endpoint = endpoint_url()
    if endpoint:
        conf["fs.s3a.endpoint"] = endpoint
        conf["fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
    if region():
        conf["fs.s3a.endpoint.region"] = str(region())
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        # only the environment: with keys there, no fallback to an instance-metadata lookup
        conf["fs.s3a.aws.credentials.provider"] = ENV_CREDENTIALS
    return conf


def locations(settings: Settings) -> list[str]:
    """``output.path`` and the configured input paths."""
    paths = [getattr(settings.input, name).path for name in type(settings.input).model_fields]
    return [settings.output.path, *[p for p in paths if p]]


def s3a_conf(settings: Settings) -> dict[str, str] | None:
    """The S3A settings a Spark session needs for ``settings`` (None: no location is on S3)."""
    configure(settings.lakehouse.s3)
    if not any(is_s3(loc) for loc in locations(settings)):
        return None
    return hadoop_conf()


# ---- pyarrow's view of a location (the driver's own reads, moves and uploads) ---------------------------
@functools.lru_cache(maxsize=8)
def _s3_filesystem(
    endpoint: str | None, region_name: str | None, virtual: bool, credentials: tuple[str, ...]
) -> pafs.S3FileSystem:
    """One client per endpoint, region, addressing and credentials (``credentials``: the environment's
    values, only so that a changed environment gets a new client: the AWS SDK reads them itself)."""
    from pyarrow import fs

    kwargs: dict[str, object] = {"force_virtual_addressing": virtual}
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
    if region_name:
        kwargs["region"] = region_name
    # credentials: the AWS SDK's default chain (the environment first)
    return fs.S3FileSystem(**kwargs)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's file system for ``location`` and the path in it (``bucket/key`` on S3)."""
    from pyarrow import fs

    if is_s3(location):
        bucket_key = location.split("://", 1)[1].rstrip("/")
        keys = tuple(os.environ.get(k, "") for k in CREDENTIAL_ENV)
        return _s3_filesystem(endpoint_url(), region(), not path_style(), keys), bucket_key
    if scheme(location) == "file":
        return fs.LocalFileSystem(), urllib.parse.urlparse(location).path
    if is_uri(location):
        return fs.FileSystem.from_uri(location)
    return fs.LocalFileSystem(), str(Path(location).resolve())


def problem(exc: BaseException) -> str:
    """What an object store's error means, in words (its own text when it is none of the known ones)."""
    text = str(exc)
    known = (
        (
            ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ACCESS_DENIED", "AccessDenied", "Forbidden"),
            "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (("NoSuchBucket", "NO_SUCH_BUCKET"), "the bucket does not exist"),
        (
            (
                "Couldn't connect",
                "Connection refused",
                "couldn't connect",
                "UnknownHost",
                "NETWORK_CONNECTION",
            ),
            f"cannot reach the object store at {endpoint_url() or 'AWS'}",
        ),
    )
    for markers, meaning in known:
        if any(m in text for m in markers):
            return meaning
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def check(
    location: str, what: str, *, must_exist: bool = False, error: type[SegsparkError] = ConfigError
) -> None:
    """Before Spark starts: the bucket of an S3 ``location`` exists and the credentials open it (and,
    with ``must_exist``, something is at the location). Raises ``error`` with one line naming ``what``
    (the setting), the location and the problem. Local paths are left to their own checks."""
    from pyarrow import fs

    if not is_s3(location):
        return
    filesystem_, path = filesystem(location)
    bucket = path.split("/", 1)[0]
    try:
        found = filesystem_.get_file_info([bucket, path])
    except OSError as exc:
        raise error(f"{what} {location}: {problem(exc)}") from None
    if found[0].type == fs.FileType.NotFound:
        raise error(f"{what} {location}: the bucket '{bucket}' does not exist")
    if must_exist and found[1].type == fs.FileType.NotFound:
        raise error(f"{what} {location}: nothing there")


def check_locations(settings: Settings) -> None:
    """The S3 input paths and ``output.path`` of ``settings``: reachable, and the inputs present
    (``InputError`` for an input, ``ConfigError`` for the output; both exit 2)."""
    configure(settings.lakehouse.s3)
    for name in type(settings.input).model_fields:
        cfg = getattr(settings.input, name)
        if cfg.path and not cfg.table:
            check(cfg.path, f"input.{name}.path", must_exist=True, error=InputError)
    check(settings.output.path, "output.path")


def is_local(files: pafs.FileSystem) -> bool:
    return bool(files.type_name == "local")


def data_files(files: pafs.FileSystem, folder: str, suffix: str) -> list[str]:
    """The files under ``folder`` whose names end in ``suffix``, without hidden ones (``.`` or ``_``:
    checksums, markers), sorted."""
    from pyarrow import fs

    found = files.get_file_info(fs.FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted(
        i.path
        for i in found
        if i.type == fs.FileType.File
        and i.base_name.endswith(suffix)
        and not i.base_name.startswith((".", "_"))
    )


# ---- files the driver writes under an object-store output (the report) -------------------------------------
@contextlib.contextmanager
def local_folder(location: str) -> Iterator[Path]:
    """``location`` as a local folder to write into: the folder itself when local; otherwise a
    temporary folder whose content is uploaded to ``location`` when the block ends without error
    (each top-level folder replaces the one of the same name there)."""
    if not is_uri(location):
        yield Path(location).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="segspark-upload-") as tmp:
        yield Path(tmp)
        upload(Path(tmp), location)


def upload(folder: Path, location: str) -> None:
    """Copy the visible top-level entries of ``folder`` to ``location``, replacing what is there."""
    from pyarrow import fs

    target, base = filesystem(location)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        dest = f"{base}/{entry.name}"
        if entry.is_dir():
            target.delete_dir_contents(dest, missing_dir_ok=True)
        fs.copy_files(str(entry), dest, source_filesystem=fs.LocalFileSystem(), destination_filesystem=target)


def copy_tree(src: str, dest: str) -> None:
    """Copy the files under ``src`` to ``dest``; either a local folder or an object-store location."""
    from pyarrow import fs

    source, src_path = filesystem(src)
    target, dest_path = filesystem(dest)
    if target.type_name == "local":
        os.makedirs(dest_path, exist_ok=True)
    fs.copy_files(src_path, dest_path, source_filesystem=source, destination_filesystem=target)


def delete_tree(location: str) -> None:
    """Delete everything under ``location`` (nothing there is no error).

    On S3 the objects go one at a time, then the folder markers deepest first: a batch delete of a
    whole prefix fails on stores that keep real folders (versitygw's POSIX backend refuses a folder
    marker whose folder still holds files), which Spark's S3A writer leaves behind it."""
    from pyarrow import fs

    files, path = filesystem(location)
    if not is_s3(location):
        with contextlib.suppress(FileNotFoundError):
            files.delete_dir(path)
        return
    listed = files.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    for info in listed:
        if info.type == fs.FileType.File:
            files.delete_file(info.path)
    folders = [i.path for i in listed if i.type == fs.FileType.Directory]
    for folder in [*sorted(folders, key=lambda p: p.count("/"), reverse=True), path]:
        with contextlib.suppress(FileNotFoundError, OSError):
            files.delete_dir(folder)
