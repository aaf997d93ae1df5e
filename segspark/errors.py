"""Error types and the exit codes the command line maps them to."""

from __future__ import annotations


class SegsparkError(Exception):
    """Base error: anything else that stops a run (exit code 1)."""

    exit_code = 1


class ConfigError(SegsparkError):
    """Bad configuration or arguments (exit code 2)."""

    exit_code = 2


class DataQualityError(SegsparkError):
    """Input data failed a blocking rule (exit code 3)."""

    exit_code = 3


class InputError(SegsparkError):
    """An input table is missing, unreadable or lacks a mapped column (exit code 2)."""

    exit_code = 2


class EnvironmentProblem(SegsparkError):
    """The machine lacks something the job needs, such as a suitable Java (exit code 1)."""

    exit_code = 1
