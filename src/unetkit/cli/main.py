"""`unetkit` entry point. Each verb lives in its own module and calls the public API."""
from __future__ import annotations

import importlib
import sys

import os

import typer

import unetkit
from unetkit.cli.common import DEBUG_ENV, ErrorBoundaryGroup

# every verb runs inside the one error boundary (cli/common.py): known errors -> one line + exit code
app = typer.Typer(add_completion=False, no_args_is_help=True, cls=ErrorBoundaryGroup,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="unetkit: U-Net family segmentation - models, training, inference, evaluation.")

# modules that add verbs to `app` through a `register(app)` function
COMMAND_MODULES = [
    "unetkit.cli.models_cmd",
    "unetkit.cli.data_cmd",
    "unetkit.cli.plan_cmd",
    "unetkit.cli.train_cmd",
    "unetkit.cli.predict_cmd",
    "unetkit.cli.evaluate_cmd",
    "unetkit.cli.export_cmd",
    "unetkit.cli.bench_cmd",
    "unetkit.cli.paradigms_cmd",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"unetkit {unetkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks (same as {DEBUG_ENV}=1).")) -> None:
    """unetkit command line."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
