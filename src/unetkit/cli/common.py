"""The CLI's one error boundary and its shared option validators.

Every verb runs inside `ErrorBoundaryGroup.invoke`: a known exception becomes one line on stderr
and an exit code (1; 130 for an interrupt), never a traceback:
- `UnetkitError` (DataError, ConfigError, TrainingError, ...) and `CheckpointError`: their message;
- `OSError` (missing file, no space, permission): the message with the file named;
- `KeyboardInterrupt`: "interrupted", exit 130 (training turns SIGINT/SIGTERM into `Interrupted`).
Anything else is a bug: one line that says so. `--debug` (before the verb) or `UNETKIT_DEBUG=1`
shows the full traceback instead.
Options are validated before any work by the callbacks below (typer `callback=`), which raise
ConfigError naming the option.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Callable, Iterator, NoReturn, Sequence

import typer
from typer.core import TyperGroup

from unetkit.errors import ConfigError, Interrupted, UnetkitError

DEBUG_ENV = "UNETKIT_DEBUG"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `message` to stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe_error(err: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an exception the user can act on; None for a bug."""
    from unetkit.io.checkpoint import CheckpointError

    if isinstance(err, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(err, Interrupted):  # not an error: the user asked, and the message says how to go on
        return str(err), Interrupted.exit_code
    if isinstance(err, (UnetkitError, CheckpointError)):
        return f"error: {err}", int(getattr(err, "exit_code", 1))
    if isinstance(err, OSError):
        return f"error: {_os_message(err)}", 1
    if isinstance(err, MemoryError):
        return "error: out of memory; use smaller windows (--roi), a smaller --batch-size or a smaller model", 1
    return None


def _os_message(err: OSError) -> str:
    filename = err.filename
    text = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and "space" not in text.lower():
        text = f"no space left on device ({text})"
    if filename is not None and str(filename) not in text:
        return f"{filename}: {text}"
    return text if err.strerror is None or filename is not None else str(err)


# click's own usage errors (unknown verb, bad option) print click's usage message and exit 2. Typer
# 0.9-0.15 uses the `click` package, newer releases a vendored copy: take the base class from typer's
# own BadParameter, so the boundary recognises both.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Known exceptions -> message on stderr + exit code; unknown ones -> a one-line bug report."""
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - the boundary
        if isinstance(err, _CLICK_EXCEPTION) or debug_enabled():
            raise
        described = describe_error(err)
        if described is None:
            message = (f"error: unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                       f"(a bug in unetkit; run again with {DEBUG_ENV}=1 for the traceback and report it)")
            code = 1
        else:
            message, code = described
        typer.echo(message, err=True)
        raise typer.Exit(code) from None


# verbs written before the boundary existed wrap their body in this; it is the same boundary
user_errors = error_boundary


class ErrorBoundaryGroup(TyperGroup):
    """The `unetkit` command group: every verb (and its option callbacks) runs inside the boundary."""

    def invoke(self, ctx: Any) -> Any:
        with error_boundary():
            return super().invoke(ctx)


# ---- option validators (typer callbacks); each raises ConfigError naming the option ---------------
def _name(param: Any) -> str:
    opts = getattr(param, "opts", None) or [getattr(param, "name", "value")]
    return max(opts, key=len)


def in_range(low: float | None = None, high: float | None = None, low_open: bool = False,
             high_open: bool = False) -> Callable[[Any, Any, Any], Any]:
    """A callback accepting None or low <=/< value <=/< high."""

    def check(ctx: Any, param: Any, value: Any) -> Any:
        if value is None:
            return value
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            bad = (low is not None and (v <= low if low_open else v < low)) or \
                  (high is not None and (v >= high if high_open else v > high))
            if bad:
                lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
                hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
                want = f"in {lo}, {hi}" if low is not None and high is not None else \
                    (f">{'' if low_open else '='} {low:g}" if low is not None else f"<{'' if high_open else '='} {high:g}")
                raise ConfigError(f"{_name(param)}: must be {want}, got {v:g}")
        return value

    return check


positive = in_range(1)
non_negative = in_range(0)
fraction = in_range(0.0, 1.0, high_open=True)
probability = in_range(0.0, 1.0)
spatial_dims = in_range(2, 3)


def choice(options: Sequence[str]) -> Callable[[Any, Any, Any], Any]:
    def check(ctx: Any, param: Any, value: Any) -> Any:
        if value is not None and value not in options:
            raise ConfigError(f"{_name(param)}: must be one of {', '.join(options)}, got '{value}'")
        return value

    return check


def device_option(ctx: Any, param: Any, value: Any) -> Any:
    """Check the device exists here before any work (`unetkit.devices.resolve_device`)."""
    if value is not None:
        from unetkit.devices import resolve_device

        resolve_device(value)
    return value


def size_list(ctx: Any, param: Any, value: Any) -> Any:
    """'256' or '256,256' (or 256x256) -> [256] / [256, 256]; every size a positive integer."""
    if value is None:
        return None
    text = str(value).replace("x", ",").replace(" ", ",")
    try:
        sizes = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise ConfigError(f"{_name(param)}: expects sizes like 256 or 256,256, got '{value}'") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError(f"{_name(param)}: sizes must be positive integers, got '{value}'")
    return sizes
