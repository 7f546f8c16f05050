"""What every `hub` command shares: exit codes, one-line errors, `--json`, tables, help.

Errors a command expects are raised as `CliError` (or `ApiError`/`Unreachable` from the
client); `hub.cli.main` prints each as one line on stderr, `hub: <what happened>`, and exits
with the error's code. Nothing a user can cause ends in a traceback.

Commands register themselves with `command(sub, name, help=..., examples=...)`, which
gives every command the same help layout (an "Examples" section) and the one-line
argument errors; listings add `add_json(parser)` and print with `emit(args, obj, text)`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import textwrap
import urllib.error
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_ERROR = 1  # the API refused the request, a file could not be read, ...
EXIT_USAGE = 2  # bad arguments (argparse's own convention)
EXIT_FAILURES = 3  # a followed session ended with failed or cancelled deliveries
EXIT_UNREACHABLE = 4  # the API, the database or Asterisk could not be reached
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES_HELP = """exit codes:
  0    success (a followed session completed with every recipient delivered)
  1    error: the API refused the request (4xx/5xx), a file is missing or invalid, ...
  2    usage: bad arguments
  3    a followed session (hub send, hub sessions show --follow) ended with failed or
       cancelled deliveries; see `hub report SESSION`
  4    the API, the database, Redis or Asterisk (ARI, AMI) could not be reached (retrying
       may help)
  130  interrupted (Ctrl-C); a session being followed keeps running"""


class CliError(Exception):
    """An error to show as one line (`hub: <message>`) with an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, code)


class HubParser(argparse.ArgumentParser):
    """argparse with one-line errors: `hub: hub sessions show: <problem> (see --help)`."""

    def error(self, message: str) -> NoReturn:
        print(f"hub: {self.prog}: {one_line(message)} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def command(sub: Any, name: str, *, help: str, examples: str,  # noqa: A002 (argparse's name)
            description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its examples (indented shell lines)."""
    lines = textwrap.dedent(examples).strip("\n").splitlines()
    epilog = "Examples:\n" + "\n".join(f"  {line.rstrip()}" if line.strip() else "" for line in lines)
    text = description or help[:1].upper() + help[1:] + "."
    text = "\n".join(textwrap.fill(par, 79) for par in text.splitlines())
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=text,
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true",
                        help=f"print {what} as JSON (stable, for scripts)")


def print_json(obj: Any, *, compact: bool = False) -> None:
    print(json.dumps(obj, default=str) if compact else json.dumps(obj, indent=2, default=str))


def emit(args: argparse.Namespace, obj: Any, text: Callable[[Any], None]) -> None:
    """JSON with --json, else `text(obj)` for people."""
    if getattr(args, "json", False):
        print_json(obj)
    else:
        text(obj)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
                empty: str = "(none)") -> None:
    """Aligned columns with a header; `None` shows as `-`."""
    if not rows:
        print(empty)
        return

    def cell(row: dict[str, Any], col: str) -> str:
        value = row.get(col)
        return "-" if value is None or value == "" else one_line(str(value))

    widths = {c: max([len(c)] + [len(cell(r, c)) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(cell(r, c).ljust(widths[c]) for c in columns).rstrip())


def uuid_arg(what: str) -> Callable[[str], str]:
    """An argparse type: a UUID, or a one-line usage error naming what was expected."""

    def parse(value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a {what} id (a UUID such as"
                " 3f2b8c1e-5d4a-4f7e-9c61-2a8b0d9e7f10)") from None

    return parse


def positive_seconds(value: str) -> float:
    """An argparse type: a number of seconds greater than zero."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def counts_text(counts: dict[str, int], order: Iterable[str] = ()) -> str:
    keys = [k for k in order if counts.get(k)] + sorted(k for k in counts if k not in order)
    return " ".join(f"{k}={counts[k]}" for k in keys if counts.get(k))


def reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (`connection refused`, `timed out`, ...)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        exc = exc.reason
    if isinstance(exc, socket.gaierror):
        return f"the host name cannot be resolved ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
