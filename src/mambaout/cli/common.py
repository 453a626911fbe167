"""What every subcommand shares: the parser that refuses in one line, the user's-mistake error, and the rewording
of any failure into the one line the user reads."""
from __future__ import annotations

import argparse

EXIT_USAGE = 2
DEBUG_HELP = "show the full traceback when something fails"


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --debug given earlier (mambaout --debug CMD) must survive this parser's defaults.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def user_message(e: Exception) -> tuple[str, int]:
    """The error line's ``kind: message`` part and the exit status: 2 for the user's own problem (a bad value, a
    missing file or package), 1 for an internal error."""
    from ..utils.optional import missing_package

    e = missing_package(e) or e
    known = isinstance(e, (CliError, ValueError, OSError, ImportError, RuntimeError))
    kind = "error" if known else f"internal error ({type(e).__name__})"
    return f"{kind}: {e}", EXIT_USAGE if known else 1


__all__ = ["DEBUG_HELP", "EXIT_USAGE", "CliError", "_Parser", "add_debug", "user_message"]
