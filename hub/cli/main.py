"""`hub`: run the processes and operate the hub. `hub --help` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from hub import logs
from hub.cli import admin, sessions, usage
from hub.cli.client import DEFAULT_TIMEOUT_S
from hub.cli.output import (
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    CliError,
    HubParser,
    add_json,
    command,
    one_line,
    positive_seconds,
    print_json,
    print_table,
)
from hub.config import Settings, load_settings

PROCESSES = ("api", "worker", "voice")  # long-running: they log to stderr, tracebacks included


def fast_event_loops() -> None:
    """Every event loop this process makes (asyncio.run, aiohttp's run_app, each worker
    thread's) is a uvloop loop when uvloop is installed: the same asyncio API with its
    event loop, sockets and timers in C, which about halves the CPU each HTTP request,
    callback or query costs the hub. Without uvloop, asyncio's own loop serves."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from hub.api import group

    count = group.size(settings)
    if count > 1 and group.folder() is None:
        return group.supervise(settings, count)
    from hub.api.app import run

    run(settings)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from hub.jobs.worker import DEFAULT_QUEUES, run_worker

    queues = tuple(args.queues.split(",")) if args.queues else DEFAULT_QUEUES
    run_worker(settings, queues, burst=args.burst)
    return 0


def cmd_voice(settings: Settings, args: argparse.Namespace) -> int:
    from hub.voice.controller import serve

    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Start or stop the embedded Asterisk test bed (scripts/asterisk.sh)."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "asterisk.sh"
    extra = ["--json"] if args.json and args.action == "up" else []
    return subprocess.call(["bash", str(script), args.action, *extra])


def cmd_calls(settings: Settings, args: argparse.Namespace) -> int:
    from hub.cli import asterisk

    rows = asterisk.calls(settings)
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["id", "state", "number", "sessionId", "durationS", "name"])
        print(f"{len(rows)} active channel(s)")
    return 0


def cmd_asterisk(settings: Settings, args: argparse.Namespace) -> int:
    from hub.cli import asterisk

    print(asterisk.run_command(settings, " ".join(args.cli)))
    return 0


def cmd_calls_hangup(settings: Settings, args: argparse.Namespace) -> int:
    from hub.cli import asterisk

    asterisk.hangup(settings, args.id, args.retry)
    print(f"call {args.id} hung up" + (" (retry policy applies)" if args.retry else ""))
    return 0


def cmd_trunks(settings: Settings, args: argparse.Namespace) -> int:
    from hub.cli import asterisk

    rows = asterisk.trunks(settings)
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["endpoint", "state", "contact", "qualify", "rttMs",
                                    "activeCalls", "heldChannels", "cap", "cps", "lastProblem"])
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from hub.demo import run_demo

    return run_demo(settings)


def cmd_completion(settings: Settings, args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


TOP_EXAMPLES = """
hub apps create acme --json                       # an app and its API key
export HUB_API_KEY=hub_... HUB_API_URL=http://127.0.0.1:8080
hub transports add --name smtp --type email --config '{"host": "127.0.0.1", "port": 25}'
hub send broadcast.json                           # submit and follow with a progress bar
hub sessions list --json
hub report SESSION --csv > report.csv
"""


def build_parser() -> argparse.ArgumentParser:
    p = HubParser(prog="hub", description="Connect Hub: run the hub's processes and operate it.",
                  epilog="Examples:\n" + "\n".join(f"  {line}" for line in
                                                   TOP_EXAMPLES.strip().splitlines())
                  + "\n\nEvery command has --help with examples; listings take --json.\n"
                  "HUB_DEBUG=1 shows the traceback of an unexpected error.\n\n" + EXIT_CODES_HELP,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api-url", help="the hub API (default HUB_API_URL or HUB_PUBLIC_URL)")
    p.add_argument("--api-key", help="an app's API key (default HUB_API_KEY)")
    p.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"give up on an API request after this long (default {DEFAULT_TIMEOUT_S:g})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=HubParser)
    command(sub, "api", help="run the HTTP API", examples="""
            hub api
            HUB_API_PORT=9000 hub api
            """).set_defaults(func=cmd_api)
    w = command(sub, "worker", help="run an RQ worker with the reconciler", examples="""
                hub worker
                hub worker --queues email,sms --burst
                """)
    w.add_argument("--queues", help="comma-separated queues (default: all but voice)")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.set_defaults(func=cmd_worker)
    command(sub, "voice", help="run the ARI voice controller", examples="""
            hub voice
            HUB_ARI_URL=http://127.0.0.1:8088 hub voice
            """).set_defaults(func=cmd_voice)
    dev = command(sub, "dev", help="embedded Asterisk for development: up|down|status",
                  examples="""
                  hub dev up --json
                  hub dev status
                  hub dev down
                  """)
    dev.add_argument("action", choices=["up", "down", "status"])
    add_json(dev, "where ARI and AMI listen (with up)")
    dev.set_defaults(func=cmd_dev)
    calls = command(sub, "calls", help="live channels on Asterisk (ARI)", examples="""
                    hub calls
                    hub calls --json
                    """)
    add_json(calls, "the channels")
    calls.set_defaults(func=cmd_calls)
    hang = command(calls.add_subparsers(dest="sub"), "hangup", help="end a live call",
                   description="End a live call. Its attempt records detail.hangupBy=operator;"
                   " the recipient gets no further attempt (cancelled, or delivered if the audio"
                   " had played to its end) unless --retry leaves it to the retry policy.",
                   examples="""
                   hub calls hangup 1732650000.42
                   hub calls hangup hub-5f0c... --retry
                   """)
    hang.add_argument("id", metavar="ID", help="the channel id (from `hub calls`)")
    hang.add_argument("--retry", action="store_true", help="leave it to the retry policy")
    hang.set_defaults(func=cmd_calls_hangup)
    ast = command(sub, "asterisk", help="run an Asterisk CLI command over AMI",
                  examples="""
                  hub asterisk "core show channels"
                  hub asterisk pjsip show endpoints
                  """)
    ast.add_argument("cli", nargs="+", metavar="COMMAND")
    ast.set_defaults(func=cmd_asterisk)
    trunks = command(sub, "trunks", help="PJSIP endpoints and their active calls", examples="""
                     hub trunks
                     hub trunks --json
                     """)
    add_json(trunks, "the endpoints")
    trunks.set_defaults(func=cmd_trunks)
    admin.register(sub)  # migrate, apps, transports
    sessions.register(sub)  # send, sessions, report
    usage.register(sub)  # usage
    command(sub, "demo", help="run the demo broadcast end to end", examples="""
            hub demo
            """).set_defaults(func=cmd_demo)
    comp = command(sub, "completion", help="print a shell completion script (bash or zsh)",
                   examples="""
                   source <(hub completion bash)                          # this shell only
                   hub completion bash > /etc/bash_completion.d/hub       # every bash
                   hub completion zsh > "${fpath[1]}/_hub"                # zsh
                   """)
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.set_defaults(func=cmd_completion)
    return p


def _unexpected(exc: BaseException) -> int:
    """One line and where the traceback went, for errors no command expected."""
    text = "".join(traceback.format_exception(exc))
    where = ""
    try:
        fd, path = tempfile.mkstemp(prefix="hub-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        where = f"; traceback in {path}"
    except OSError:
        pass
    print(f"hub: unexpected error: {type(exc).__name__}: {one_line(str(exc))[:300]}"
          f"{where} (HUB_DEBUG=1 shows it here)", file=sys.stderr)
    return EXIT_ERROR


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return load_settings()
    except ValidationError as exc:
        problems = "; ".join(f"HUB_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        raise CliError(f"bad setting: {one_line(problems)}") from None
    except ValueError as exc:  # e.g. hub.toml is not valid TOML
        raise CliError(f"bad settings: {one_line(str(exc))}") from None


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings()
    process = args.command in PROCESSES
    debug = bool(os.environ.get("HUB_DEBUG"))
    logs.configure(settings.log_level if process or debug else logging.WARNING)
    if process and settings.uvloop:
        fast_event_loops()
    try:
        return int(args.func(settings, args))
    except (CliError, BrokenPipeError):
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise CliError(one_line(str(exc)), EXIT_UNREACHABLE) from None
    except OSError as exc:
        raise CliError(one_line(str(exc))) from None
    except Exception as exc:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            raise CliError(f"cannot reach Redis: {one_line(str(exc))} (check HUB_REDIS_URL)",
                           EXIT_UNREACHABLE) from None
        if process or debug:
            raise
        return _unexpected(exc)


def main(argv: list[str] | None = None) -> int:
    """`hub`: every error a user can cause is one line on stderr and a non-zero exit."""
    try:
        return run(argv)
    except CliError as exc:
        print(f"hub: {one_line(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("hub: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `hub sessions list | head -1`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
