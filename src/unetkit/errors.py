"""Exceptions with messages meant for users: each names the file or setting and the problem."""
from __future__ import annotations


class UnetkitError(Exception):
    """Base class of errors the CLI reports as a message and exit code 1."""


class DataError(UnetkitError, ValueError):
    """An unreadable, inconsistent or unexpected input file or dataset."""


class ConfigError(UnetkitError, ValueError):
    """An invalid configuration: unknown field, bad value, incompatible options."""


class TrainingError(UnetkitError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class Interrupted(UnetkitError):
    """Work stopped by SIGINT / SIGTERM after finishing (or abandoning) its current step."""

    exit_code = 130


class UnsupportedError(UnetkitError, RuntimeError):
    """This machine or software build cannot run the requested feature (the message names the alternative)."""
