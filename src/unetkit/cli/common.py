"""Helpers shared by the CLI verbs."""
from __future__ import annotations

import contextlib
from typing import Iterator, NoReturn

import typer

from unetkit.errors import UnetkitError
from unetkit.io.checkpoint import CheckpointError


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` to stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn unetkit's user-facing errors (and missing files) into a message and exit code 1."""
    try:
        yield
    except (UnetkitError, CheckpointError, FileNotFoundError, FileExistsError) as err:
        fail(str(err))
