"""The Databricks Asset Bundle (databricks.yml + resources/) against the job's own CLI and config.

No Databricks workspace is reachable from the test suite, and the Databricks CLI's
``bundle validate`` needs one (it signs in and looks up the current user before it resolves
anything). So the bundle is resolved here by a small hand-written resolver: the included files,
the selected target's resources and variables, ``${...}`` references (the current user is a
stand-in), and the jobs' ``{{job.parameters.<name>}}`` dynamic values replaced by the parameters'
declared defaults. Every job is then checked against the typed job model of the
``databricks-bundles`` package (unknown fields, enum values), and every task of every job of every
target against segspark's real argument parser, configuration loader and input preflight; the
real ``segspark-job`` entry point runs each task's parameters up to the point where it would read
the pseudonymization key from the secret scope. The wheel the bundle builds is built and inspected.
Nothing here contacts a workspace: the subprocesses run without Databricks credentials.
"""

from __future__ import annotations

import configparser
import contextlib
import copy
import fnmatch
import io
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from segspark import cli
from segspark.config import Settings
from segspark.errors import SegsparkError

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY_TARGET = "jobs.run_pipeline:main"
USER = "someone@example.com"  # stands in for ${workspace.current_user.userName}
JOB_RUN_ID = "123456789"  # stands in for {{job.run_id}}
DELTA_OSS_CONF = ("spark.sql.extensions", "spark.sql.catalog.spark_catalog")

_REF = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")
_DYNAMIC = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_SECRET_REF = re.compile(r"\{\{secrets/([^/{}]+)/([^/{}]+)\}\}")


# ---- the resolver ------------------------------------------------------------------------------
@dataclass
class Job:
    key: str
    spec: dict[str, Any]
    source: Path  # the file that defines it: its relative paths resolve against its folder
    raw: dict[str, Any]  # as written, before the ${...} references are resolved


@dataclass
class Bundle:
    target: str
    config: dict[str, Any]  # the target's merged configuration, ${...} resolved
    variables: dict[str, str]
    jobs: dict[str, Job]

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", ""))

    @property
    def file_path(self) -> str:
        return str(self.config["workspace"]["file_path"])


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict), f"{path.name}: a bundle file holds a mapping"
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def bundle_files() -> list[Path]:
    """databricks.yml and the files its ``include`` globs match (relative to the bundle root)."""
    files = [ROOT / "databricks.yml"]
    for pattern in _read(files[0]).get("include", []):
        matched = sorted(ROOT.glob(pattern))
        assert matched, f"include '{pattern}' matches no file"
        files += matched
    return files


def _load() -> tuple[dict[str, Any], dict[tuple[str | None, str], Path]]:
    """All files merged, and where each job is defined (per target, None = every target)."""
    merged: dict[str, Any] = {}
    sources: dict[tuple[str | None, str], Path] = {}
    for path in bundle_files():
        data = _read(path)
        places: list[tuple[str | None, dict[str, Any]]] = [(None, data)]
        places += [(name, spec or {}) for name, spec in (data.get("targets") or {}).items()]
        for target, holder in places:
            for key in (holder.get("resources") or {}).get("jobs") or {}:
                # the CLI refuses a resource defined twice; so does this resolver
                assert (target, key) not in sources, f"job '{key}' defined twice ({path.name})"
                sources[(target, key)] = path
        merged = _deep_merge(merged, {k: v for k, v in data.items() if k != "include"})
    return merged, sources


def _interpolate(value: Any, lookup: Callable[[str], str]) -> Any:
    """``value`` with every ``${ref}`` in its strings replaced, a new structure (aliases are shared)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, lookup) for v in value]
    if isinstance(value, str):
        text = value
        for _ in range(10):  # a variable's default may reference another variable
            new = _REF.sub(lambda m: lookup(m.group(1)), text)
            if new == text:
                break
            text = new
        assert "${" not in text, f"unresolved reference in {value!r}"
        return text
    return value


def resolve(target: str) -> Bundle:
    """The bundle as ``databricks bundle validate -t <target>`` would resolve it (see the module doc)."""
    merged, sources = _load()
    targets = merged.get("targets") or {}
    assert target in targets, f"no target '{target}'"
    chosen = targets[target] or {}
    base = {k: v for k, v in merged.items() if k != "targets"}
    top_jobs = set(((base.get("resources") or {}).get("jobs")) or {})
    target_jobs = set(((chosen.get("resources") or {}).get("jobs")) or {})
    # the CLI merges a target's job over a top-level one of the same key (tasks by task_key, ...);
    # this bundle defines each job in one place only, so the plain merge below is exact
    assert not top_jobs & target_jobs, f"jobs defined both globally and in {target}: {top_jobs & target_jobs}"
    config = _deep_merge(base, {k: v for k, v in chosen.items() if k != "variables"})
    raw_jobs = copy.deepcopy((config.get("resources") or {}).get("jobs") or {})

    declared: dict[str, Any] = base.get("variables") or {}
    overrides: dict[str, Any] = chosen.get("variables") or {}
    assert not set(overrides) - set(declared), (
        f"{target} sets undeclared variables {set(overrides) - set(declared)}"
    )
    raw: dict[str, str] = {}
    for name, spec in declared.items():
        assert "lookup" not in spec, f"variable '{name}': a lookup needs a workspace; give a default"
        value = overrides[name] if name in overrides else spec.get("default")
        if isinstance(value, dict):
            value = value.get("default")
        assert value is not None, f"variable '{name}' has no value in target '{target}'"
        raw[name] = str(value)

    fixed = {
        "bundle.name": str(config["bundle"]["name"]),
        "bundle.target": target,
        "workspace.current_user.userName": USER,
        "workspace.current_user.short_name": USER.split("@")[0],
    }

    def lookup(ref: str) -> str:
        if ref.startswith("var."):
            assert ref[4:] in raw, f"${{{ref}}}: no such variable"
            return raw[ref[4:]]
        assert ref in fixed, f"${{{ref}}}: not a reference this resolver knows"
        return fixed[ref]

    variables = {name: _interpolate(value, lookup) for name, value in raw.items()}
    workspace = _interpolate(config.get("workspace") or {}, lookup)
    root = workspace.get("root_path") or f"/Workspace/Users/{USER}/.bundle/{fixed['bundle.name']}/{target}"
    fixed["workspace.root_path"] = root
    fixed["workspace.file_path"] = workspace.get("file_path") or f"{root}/files"
    config = _interpolate(config, lookup)
    config["workspace"] = {**workspace, "root_path": root, "file_path": fixed["workspace.file_path"]}
    jobs = {
        key: Job(key, spec, sources.get((target, key)) or sources[(None, key)], raw_jobs[key])
        for key, spec in ((config.get("resources") or {}).get("jobs") or {}).items()
    }
    return Bundle(target, config, variables, jobs)


def targets() -> list[str]:
    return sorted(_read(ROOT / "databricks.yml").get("targets") or {})


def job_parameters(job: Job) -> dict[str, str]:
    return {str(p["name"]): str(p.get("default", "")) for p in job.spec.get("parameters") or []}


def dynamic(text: str, job: Job) -> str:
    """``text`` with the run-time ``{{...}}`` references a run would fill in: job parameters by
    their declared defaults, the run id by a stand-in. Any other reference is an error here."""
    params = job_parameters(job)

    def sub(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref.startswith("job.parameters."):
            name = ref.removeprefix("job.parameters.")
            assert name in params, f"{job.key}: {{{{{ref}}}}} names no job parameter ({sorted(params)})"
            return params[name]
        assert ref == "job.run_id", f"{job.key}: unexpected dynamic value {{{{{ref}}}}}"
        return JOB_RUN_ID

    return _DYNAMIC.sub(sub, text)


# ---- the checks, as functions the tests call for every task and mutate to see them fail ---------
def local_file(bundle: Bundle, remote: str) -> Path:
    """The repository file a workspace path under ``${workspace.file_path}`` is synced from."""
    prefix = bundle.file_path + "/"
    assert remote.startswith(prefix), f"{remote}: not a synced bundle file (${{workspace.file_path}}/...)"
    rel = remote[len(prefix) :]
    path = ROOT / rel
    assert path.is_file(), f"{remote}: {rel} does not exist in the repository"
    excluded = [p for p in (bundle.config.get("sync") or {}).get("exclude") or [] if fnmatch.fnmatch(rel, p)]
    assert not excluded, f"{rel} is excluded from the bundle's sync by {excluded}"
    ignored = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT, check=False).returncode == 0
    assert not ignored, f"{rel} is gitignored, so the bundle does not sync it"
    return path


def task_argv(job: Job, task: dict[str, Any]) -> list[str]:
    wheel = task["python_wheel_task"]
    assert wheel["package_name"] == PYPROJECT["project"]["name"]
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts.get(wheel["entry_point"]) == ENTRY_TARGET, (
        f"{job.key}: entry point '{wheel['entry_point']}' is not {ENTRY_TARGET} in [project.scripts]"
    )
    # keyword parameters would receive the job parameters pushed down as --name=value arguments
    assert "named_parameters" not in wheel, f"{job.key}: use positional parameters"
    return [dynamic(str(p), job) for p in wheel.get("parameters") or []]


def check_task(bundle: Bundle, job: Job, task: dict[str, Any]) -> tuple[list[str], Settings]:
    """The task's parameters through segspark's own parser, config loader and input preflight, as
    ``segspark-job`` runs them up to the point where Spark would start; the settings they give."""
    argv = task_argv(job, task)
    # jobs.run_pipeline puts 'run' in front of arguments that do not start with a command; the
    # bundle names the command, so that defaulting passes the arguments through unchanged
    assert argv and argv[0] in cli.COMMANDS, f"{job.key}: the parameters must start with a command"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = cli.build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{job.key}: segspark's parser refuses {argv}: {errors.getvalue()}") from None
    args.conf = [str(local_file(bundle, conf)) for conf in args.conf]
    try:
        settings = cli._settings(args)  # the CLI's own --conf/--set/--run-id loading and validation
        cli.check_inputs(settings)
    except SegsparkError as exc:
        raise AssertionError(f"{job.key}: {exc}") from None
    return argv, settings


# Quartz cron (https://www.quartz-scheduler.org/documentation/quartz-2.3.0/tutorials/crontrigger.html):
# hand-written because the Python cron libraries at hand parse Unix cron (5 fields, no '?').
_MONTHS = {m: i for i, m in enumerate(re.findall("...", "JANFEBMARAPRMAYJUNJULAUGSEPOCTNOVDEC"), start=1)}
_DAYS = {d: i for i, d in enumerate(re.findall("...", "SUNMONTUEWEDTHUFRISAT"), start=1)}
_QUARTZ_FIELDS = [
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 1, 7, _DAYS),
    ("year", 1970, 2199, {}),
]


def parse_quartz(expression: str) -> list[set[int] | None]:
    """The values each field of a Quartz expression allows (None for '?'); AssertionError if invalid.
    Of the special characters, '#' (the nth weekday of the month, day-of-week only) is understood;
    L and W are refused: this bundle does not use them."""
    parts = expression.split()
    assert len(parts) in (6, 7), f"'{expression}': Quartz takes 6 or 7 fields, not {len(parts)}"
    fields: list[set[int] | None] = []
    for text, (name, low, high, names) in zip(parts, _QUARTZ_FIELDS, strict=False):
        if text == "?":
            assert name in ("day-of-month", "day-of-week"), f"'{expression}': '?' only for a day field"
            fields.append(None)
            continue
        values: set[int] = set()
        for item in text.split(","):
            item, _, nth = item.partition("#")
            assert not nth or (name == "day-of-week" and nth in "12345" and len(nth) == 1), (
                f"'{expression}': bad '#{nth}' in {name}"
            )
            base, _, step = item.partition("/")

            def number(token: str, name: str = name, names: dict[str, int] = names) -> int:
                token = token.upper()
                assert token in names or token.isdigit(), f"'{expression}': bad {name} value '{token}'"
                return names.get(token) or int(token)

            if base == "*":
                first, last = low, high
            elif "-" in base:
                first, last = (number(t) for t in base.split("-", 1))
            else:
                first = number(base)
                last = high if step else first
            assert low <= first <= last <= high, f"'{expression}': {name} {base} outside {low}-{high}"
            assert not step or (step.isdigit() and int(step) > 0), f"'{expression}': bad step '{step}'"
            values.update(range(first, last + 1, int(step or 1)))
        fields.append(values)
    assert (fields[3] is None) != (fields[5] is None), (
        f"'{expression}': exactly one of day-of-month and day-of-week must be '?'"
    )
    return fields


def cadence(expression: str) -> str:
    """'monthly' (one time on one day of every month, or on its nth weekday), 'weekly' (one time on
    one weekday) or 'other'."""
    second, minute, hour, day, month, weekday, *_ = parse_quartz(expression)
    once_a_day = all(f is not None and len(f) == 1 for f in (second, minute, hour))
    if not once_a_day or month != set(range(1, 13)):
        return "other"
    if day is not None and len(day) == 1 and weekday is None:
        return "monthly"
    if weekday is not None and len(weekday) == 1 and day is None:
        return "monthly" if "#" in expression.split()[5] else "weekly"
    return "other"


def weekly_start_hour(expression: str) -> int:
    """Hours from Sunday 00:00 to the start of a schedule that runs on one weekday."""
    _, _, hour, _, _, weekday, *_ = parse_quartz(expression)
    assert weekday is not None and len(weekday) == 1 and hour is not None
    return (min(weekday) - 1) * 24 + min(hour)


def wheel_reference(job: Job, reference: str) -> str:
    """A wheel reference of a job, resolved as the CLI does (against the defining file's folder),
    relative to the bundle root."""
    path = (job.source.parent / reference).resolve()
    return PurePosixPath(path.relative_to(ROOT)).as_posix()


def variant(job: Job) -> str:
    """'serverless' or 'classic', after checking the job is wholly one of them."""
    spec = job.spec
    tasks = spec["tasks"]
    if spec.get("environments"):
        keys = {e["environment_key"] for e in spec["environments"]}
        for task in tasks:
            assert task.get("environment_key") in keys, f"{job.key}/{task['task_key']}: no environment"
            assert not {"job_cluster_key", "existing_cluster_id", "new_cluster"} & set(task)
        return "serverless"
    keys = {c["job_cluster_key"] for c in spec.get("job_clusters") or []}
    assert keys, f"{job.key}: neither serverless environments nor job clusters"
    for task in tasks:
        assert task.get("job_cluster_key") in keys, f"{job.key}/{task['task_key']}: no job cluster"
        assert "environment_key" not in task
    return "classic"


def all_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return [value] if isinstance(value, str) else []


# ---- the tests ---------------------------------------------------------------------------------
TARGETS = targets()
WHEEL_GLOB = "dist/*.whl"


@pytest.fixture(scope="module")
def bundles() -> dict[str, Bundle]:
    return {target: resolve(target) for target in TARGETS}


def test_targets_offer_both_compute_variants_for_development_and_production(bundles):
    assert sum(bool(_read(ROOT / "databricks.yml")["targets"][t].get("default")) for t in TARGETS) == 1
    seen: dict[str, set[str]] = {}
    for bundle in bundles.values():
        assert bundle.mode in ("development", "production"), bundle.target
        kinds = {variant(job) for job in bundle.jobs.values()}
        assert len(kinds) == 1, f"{bundle.target} mixes {kinds}"
        seen.setdefault(bundle.mode, set()).update(kinds)
        if bundle.mode == "production":
            # production deploys one copy to a fixed place and runs on schedule
            assert bundle.config["workspace"]["root_path"].startswith("/Workspace/")
            assert bundle.variables["schedule_pause_status"] == "UNPAUSED"
    assert seen == {"development": {"serverless", "classic"}, "production": {"serverless", "classic"}}


def test_jobs_match_the_databricks_job_schema(bundles):
    # the typed job model of the databricks-bundles package: unknown fields and bad enum values fail
    from databricks.bundles.jobs import Job as JobModel

    for bundle in bundles.values():
        for job in bundle.jobs.values():
            try:
                JobModel.from_dict(copy.deepcopy(job.spec))
            except (ValueError, TypeError) as exc:
                raise AssertionError(f"{bundle.target}/{job.key}: {exc}") from None


def test_every_task_is_accepted_by_the_cli_and_config_validation(bundles):
    written: dict[str, dict[str, Any]] = {}
    for bundle in bundles.values():
        commands = {}
        for job in bundle.jobs.values():
            assert job.spec["tasks"], f"{bundle.target}/{job.key}: no task"
            for task in job.spec["tasks"]:
                argv, settings = check_task(bundle, job, task)
                params = job_parameters(job)
                where = f"{bundle.target}/{job.key}"
                commands[job.key] = argv[0]
                # the job parameters reach the settings they are meant for
                assert settings.output.catalog == params["catalog"], where
                assert settings.output.schema_ == params["schema"], where
                assert str(settings.as_of_date or "") == params["as_of_date"], where
                for name in ("transactions", "customers", "events", "marketing_spend"):
                    table = getattr(settings.input, name).table
                    assert table == (params[f"{name}_table"] or None), f"{where}: input.{name}.table"
                assert settings.input.transactions.table, f"{where}: transactions is required"
                # Databricks' own Delta, Unity Catalog tables and model registry, the workspace MLflow
                assert settings.lakehouse.engine == "delta-spark", where
                assert settings.tracking.uri == "databricks", where
                assert (
                    settings.tracking.registered_model
                    == f"{params['catalog']}.{params['schema']}.segspark_segmentation"
                )
                assert settings.tracking.experiment.startswith("/"), f"{where}: a workspace path"
                assert settings.output.path == bundle.variables["output_volume_path"], where
                assert settings.output.path.startswith("/Volumes/"), f"{where}: a Unity Catalog volume"
                # the key from the secret scope; a task retry keeps the run id (idempotent commits)
                assert settings.privacy.pseudonymize, where
                scope = (settings.privacy.secret_scope, settings.privacy.secret_key)
                assert scope == (bundle.variables["secret_scope"], bundle.variables["secret_key"]), where
                assert all(scope), where
                assert settings.run_id == f"databricks-{JOB_RUN_ID}", where
                # every target and both compute variants run the same command line and schedule
                (raw,) = [t for t in job.raw["tasks"] if t["task_key"] == task["task_key"]]
                same = {"parameters": raw["python_wheel_task"]["parameters"], "schedule": job.raw["schedule"]}
                assert written.setdefault(f"{job.key}/{task['task_key']}", same) == same, (
                    f"{where}: parameters or schedule differ from another target's"
                )
        # the monthly job refits (segspark run), the weekly one scores with the registered model
        assert sorted(commands.values()) == ["run", "score"], f"{bundle.target}: {commands}"
        for command in commands.values():
            assert cli.COMMANDS[command] is cli.cmd_run  # the whole pipeline, 'score' without a refit


def test_schedules_are_valid_quartz_monthly_refit_and_weekly_score(bundles):
    for bundle in bundles.values():
        found = {}
        for job in bundle.jobs.values():
            schedule = job.spec["schedule"]
            assert schedule["timezone_id"] == "UTC"
            assert schedule["pause_status"] in ("PAUSED", "UNPAUSED")
            command = task_argv(job, job.spec["tasks"][0])[0]
            found[command] = cadence(schedule["quartz_cron_expression"])
        assert found == {"run": "monthly", "score": "weekly"}, bundle.target


def test_the_refit_ends_before_the_weekly_score_starts(bundles):
    # both jobs write the same tables: a score that starts while the refit still writes fails with
    # the job's concurrent-write error, so the refit's day and timeout must leave room before it
    for bundle in bundles.values():
        by_command = {task_argv(job, job.spec["tasks"][0])[0]: job.spec for job in bundle.jobs.values()}
        run, score = by_command["run"], by_command["score"]
        gap = (
            weekly_start_hour(score["schedule"]["quartz_cron_expression"])
            - weekly_start_hour(run["schedule"]["quartz_cron_expression"])
        ) % (7 * 24)
        assert gap * 3600 >= run["timeout_seconds"], f"{bundle.target}: refit may overlap the score"
        assert (7 * 24 - gap) * 3600 >= score["timeout_seconds"], f"{bundle.target}: score may overlap"


def test_every_job_installs_the_wheel_artifact(bundles):
    artifacts = _read(ROOT / "databricks.yml")["artifacts"]
    (artifact,) = artifacts.values()
    assert artifact["type"] == "whl" and artifact["path"] == "."
    for bundle in bundles.values():
        for job in bundle.jobs.values():
            if variant(job) == "serverless":
                for env in job.spec["environments"]:
                    refs = [wheel_reference(job, d) for d in env["spec"]["dependencies"]]
                    assert WHEEL_GLOB in refs, f"{bundle.target}/{job.key}: {refs}"
                    # environment 4 and later carry a Spark 4 (Databricks Connect 17+) client
                    version = env["spec"].get("environment_version") or env["spec"].get("client")
                    assert int(version) >= 4, f"{bundle.target}/{job.key}: environment {version}"
                    assert not any("pyspark" in d for d in env["spec"]["dependencies"])
            else:
                for task in job.spec["tasks"]:
                    refs = [wheel_reference(job, lib["whl"]) for lib in task["libraries"] if "whl" in lib]
                    assert WHEEL_GLOB in refs, f"{bundle.target}/{job.key}: {refs}"
                for cluster in job.spec["job_clusters"]:
                    new = cluster["new_cluster"]
                    assert int(new["spark_version"].split(".")[0]) >= 17, "a Spark 4 Databricks Runtime"
                    assert new["node_type_id"]
                    assert "num_workers" in new or "autoscale" in new
                    # Unity Catalog access (the outputs are catalog.schema.table)
                    assert new["data_security_mode"] in ("SINGLE_USER", "DATA_SECURITY_MODE_DEDICATED")
                    # the runtime's Delta and catalog are configured; the OSS settings would replace them
                    assert not set(DELTA_OSS_CONF) & set(new.get("spark_conf") or {})


def test_the_key_comes_from_the_secret_scope_and_no_literal_key(bundles, monkeypatch, tmp_path):
    from segspark import privacy

    texts = {path.name: path.read_text(encoding="utf-8") for path in bundle_files()}
    texts["databricks.yaml"] = (ROOT / "conf" / "databricks.yaml").read_text(encoding="utf-8")
    for name, text in texts.items():
        assert privacy.DEMO_KEY not in text, name
    loaded = {}
    for bundle in bundles.values():
        secret = (bundle.variables["secret_scope"], bundle.variables["secret_key"])
        for job in bundle.jobs.values():
            for task in job.spec["tasks"]:
                argv, settings = check_task(bundle, job, task)
                args = cli.build_parser().parse_args(argv)
                # the privacy settings a task sets: the secret's scope and key, nothing else
                keys = {o.partition("=")[0] for o in args.overrides if o.startswith("privacy.")}
                assert keys == {"privacy.secret_scope", "privacy.secret_key"}, keys
                loaded[secret] = settings
            for cluster in job.spec.get("job_clusters") or []:
                for name, value in (cluster["new_cluster"].get("spark_env_vars") or {}).items():
                    if re.search("KEY|SECRET|TOKEN|PASSWORD", name):
                        match = _SECRET_REF.fullmatch(value)
                        assert match, f"{job.key}: {name} must be a {{{{secrets/scope/key}}}} reference"
                        assert match.groups() == secret, f"{job.key}: {name}"
    # without the key in the environment the job looks in the secret scope and says which one
    # (no Databricks credentials here: the SDK's dbutils cannot be built, nothing is contacted)
    for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.delenv("SEGSPARK_PSEUDO_KEY", raising=False)
    for (scope, key), settings in loaded.items():
        with pytest.raises(SegsparkError, match=f"secret '{re.escape(key)}' in scope '{re.escape(scope)}'"):
            privacy.resolve_key(settings.privacy)


def _entry_point_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_") and k != "SEGSPARK_PSEUDO_KEY"
    }
    env["DATABRICKS_CONFIG_FILE"] = str(tmp_path / "no-databrickscfg")  # no credentials, no contact
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


@pytest.mark.slow
def test_the_entry_point_runs_each_task_up_to_the_secret(bundles, tmp_path):
    """The installed ``segspark-job`` console script (jobs.run_pipeline:main, as the wheel task calls
    it) with the task parameters of both commands, one from each compute variant (the in-process
    test above covers every task; all targets share the parameters as written): the arguments
    parse, the configuration validates and the run stops, before Spark starts, at the key it would
    read from the secret scope (exit 2)."""
    runs: dict[tuple[str, ...], tuple[str, str]] = {}
    commands: set[str] = set()
    variants: set[str] = set()
    for bundle in bundles.values():
        for job in bundle.jobs.values():
            argv = task_argv(job, job.spec["tasks"][0])
            if argv[0] in commands or variant(job) in variants:
                continue
            commands.add(argv[0])
            variants.add(variant(job))
            local = [
                str(local_file(bundle, a)) if i and argv[i - 1] == "--conf" else a for i, a in enumerate(argv)
            ]
            runs[tuple(local)] = (bundle.variables["secret_scope"], bundle.variables["secret_key"])
    assert commands == {"run", "score"} and variants == {"serverless", "classic"}
    script = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(ep,) = entry_points(group='console_scripts', name='segspark-job')\n"
        f"assert ep.value == {ENTRY_TARGET!r}, ep.value\n"
        "sys.exit(ep.load()())\n"
    )
    env = _entry_point_env(tmp_path)
    procs = [
        (
            argv,
            scope,
            subprocess.Popen(
                [sys.executable, "-c", script, *argv],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for argv, scope in runs.items()
    ]
    for argv, (scope, key), proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, f"{argv}: exit {proc.returncode}\n{out}\n{err}"
        expected = (
            "segspark: configuration error: no pseudonymization key: set the environment variable "
            f"SEGSPARK_PSEUDO_KEY or secret '{key}' in scope '{scope}'"
        )
        assert expected in err, f"{argv}:\n{err}"


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by the bundle artifact's own build command (into a temporary folder)."""
    (artifact,) = _read(ROOT / "databricks.yml")["artifacts"].values()
    command = shlex.split(artifact["build"])
    assert command[:3] == ["python", "-m", "build"], command
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, *command[1:], "--outdir", str(out)],
        cwd=ROOT / artifact["path"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_holds_what_the_tasks_run(built_wheel):
    with zipfile.ZipFile(built_wheel) as whl:
        names = set(whl.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(whl.read(f"{dist_info}/entry_points.txt").decode())
        metadata = whl.read(f"{dist_info}/METADATA").decode()
    assert entry_points["console_scripts"]["segspark-job"] == ENTRY_TARGET
    # every tracked file of the packages the entry point imports
    tracked = subprocess.run(
        ["git", "ls-files", "segspark", "jobs"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "jobs/run_pipeline.py" in tracked
    missing = sorted(set(tracked) - names)
    assert not missing, f"not in the wheel: {missing}"
    assert re.search(r"^Name: segspark$", metadata, re.M)
    # Databricks brings its own PySpark: the wheel must not pull one in (only through an extra)
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    hard = [r for r in requires if re.match(r"(pyspark|delta-spark)\b", r) and "extra ==" not in r]
    assert not hard, hard


# ---- the checks can fail -----------------------------------------------------------------------
def _first_task(bundle: Bundle, command: str) -> tuple[Job, dict[str, Any]]:
    for job in bundle.jobs.values():
        task = job.spec["tasks"][0]
        if task_argv(job, task)[0] == command:
            return job, copy.deepcopy(task)
    raise AssertionError(command)


def _edit(task: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    params = task["python_wheel_task"]["parameters"]
    assert any(old in p for p in params), old
    task["python_wheel_task"]["parameters"] = [p.replace(old, new) for p in params]
    return task


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("output.catalog=", "output.catalgo=", "unknown configuration key 'output.catalgo'"),
        ("{{job.parameters.schema}}", "{{job.parameters.shema}}", "names no job parameter"),
        ("conf/databricks.yaml", "conf/databrick.yaml", "does not exist in the repository"),
        ("--run-id", "--runid", "refuses"),
        (
            "input.transactions.table={{job.parameters.transactions_table}}",
            "input.transactions.table=",
            "not configured",
        ),
        (
            "as_of_date={{job.parameters.as_of_date}}",
            "as_of_date=2026-13-45",
            "invalid value for 'as_of_date'",
        ),
    ],
)
def test_check_task_rejects_a_broken_task(bundles, old, new, message):
    bundle = bundles[TARGETS[0]]
    job, task = _first_task(bundle, "run")
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_task(bundle, job, _edit(task, old, new))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 1 * ?", "6 or 7 fields"),
        ("0 0 3 1 * MON", "exactly one of day-of-month and day-of-week"),
        ("0 0 25 1 * ?", "outside 0-23"),
        ("0 0 3 ? * FUNDAY", "bad day-of-week value"),
        ("0 0 3 ? * SUN#6", "bad '#6' in day-of-week"),
        ("0 0 3 1#1 * ?", "bad '#1' in day-of-month"),
    ],
)
def test_quartz_check_rejects_invalid_expressions(expression, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        parse_quartz(expression)


def test_quartz_cadence():
    assert cadence("0 0 3 1 * ?") == "monthly"
    assert cadence("0 0 3 ? * SUN#1") == "monthly"
    assert weekly_start_hour("0 0 3 ? * SUN#1") == 3
    assert weekly_start_hour("0 0 4 ? * MON") == 28
    assert cadence("0 0 4 ? * MON") == "weekly"
    assert cadence("0 0 4 ? * MON-FRI") == "other"
    assert cadence("0 0/30 4 ? * MON") == "other"
