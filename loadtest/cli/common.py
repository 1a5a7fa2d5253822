"""What every command of the command line shares: its command class, --version, exit statuses and failing."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from loadtest import __version__
from loadtest.core import exits
from loadtest.model.interrupts import EXIT_INTERRUPTED
from loadtest.model.quick import is_url

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT, EXIT_RUN_FAILED = exits.OK, exits.FAILED, exits.BAD_INPUT, exits.RUN_FAILED

EXIT_CODES = exits.help_text()
__all__ = ["EXIT_INTERRUPTED"]

_REQUIRED_ARGUMENT = re.compile(r"^\{(.*)\}(\.\.\.)?$")


def _tidy_help(params: list[Any]) -> list[Any]:
    """Help that names values as users write them: no `<bool>` after a flag, no `<str>` beside CONFIG.

    Typer prints each parameter's Python type unless it has a metavar; a flag gets an empty one, any
    other option its name in capitals unless it was given one, and an argument shows its name alone.
    """
    for param in params:
        if getattr(param, "param_type_name", "") == "argument":
            param.display_type_rich = lambda ctx: None  # the name (CONFIG) says it; `<str>` adds nothing
        elif getattr(param, "is_flag", False):
            param.metavar = param.metavar or ""
        elif param.metavar is None and param.name:
            param.metavar = param.name.upper()
    return params


class _Command(TyperCommand):
    """A command whose help reads `run [OPTIONS] CONFIG`, not `{CONFIG}`, with no Python types."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_help(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [_REQUIRED_ARGUMENT.sub(r"\1\2", piece) for piece in super().collect_usage_pieces(ctx)]


class _Group(TyperGroup):
    """A command group that says `did you mean loadtest run ok.yaml?` for a config given without a command."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy_help(super().get_params(ctx))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None and "run" in self.commands and _looks_like_config(name):
            fail(f"{name!r} is not a command; did you mean `loadtest run {shlex.join(args)}`?", EXIT_BAD_INPUT)
        return super().resolve_command(ctx, args)


def _looks_like_config(text: str) -> bool:
    """A config file's path or a URL, given where a command was expected."""
    if text.startswith("-"):
        return False
    return is_url(text) or text.lower().endswith((".yaml", ".yml")) or os.path.isfile(text)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"loadtest {__version__}")
        raise typer.Exit(EXIT_OK)


def _version_option() -> Any:
    """`--version`, on the app and on every command."""
    return typer.Option(False, "--version", callback=_show_version, is_eager=True, expose_value=False,
                        help="Show the version and exit.")


# What reading a damaged run folder raises once its files parse but hold the wrong things; the
# loaders refuse what they can name (RunFolderError), this catches the rest at the command's edge.
DAMAGE = (TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


def damaged(where: str, e: BaseException) -> str:
    return f"{where}: a report file is damaged and cannot be read ({type(e).__name__}: {e})"


def fail(message: str, status: int) -> None:
    typer.echo(f"loadtest: {message}", err=True)
    raise typer.Exit(status)
