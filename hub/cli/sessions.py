"""`hub send`, `hub sessions ...` and `hub report`: submit, follow and read sessions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import shtab

from hub.cli.client import Client, app_client
from hub.cli.output import (
    EXIT_OK,
    CliError,
    add_json,
    command,
    counts_text,
    emit,
    one_line,
    positive_seconds,
    print_json,
    print_table,
    uuid_arg,
)
from hub.cli.progress import ORDER, Progress, figures, follow, outcome_code
from hub.config import Settings

FOLLOWED = ("queued", "running", "paused", "scheduled")


def read_instruction(path: str) -> dict[str, Any]:
    """The instruction in `path`: a JSON object, or a one-line error saying what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read instruction file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"instruction file {path} is not UTF-8 text") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CliError(f"instruction file {path} is not valid JSON: {one_line(str(exc))}") from None
    if not isinstance(body, dict):
        raise CliError(f"instruction file {path} must hold a JSON object (an instruction),"
                       f" not {type(body).__name__ if body is not None else 'null'}")
    return body


def _progress(args: argparse.Namespace) -> Progress:
    """People read progress on stdout; with --json, stdout is for the JSON only, so progress
    goes to stderr, and only when that is a terminal."""
    if args.json:
        return Progress(sys.stderr if sys.stderr.isatty() else None, tty=True)
    return Progress(sys.stdout, tty=sys.stdout.isatty())


def _end(session: dict[str, Any]) -> int:
    if session["status"] == "awaiting_trigger":
        print(f"session {session['sessionId']} waits for a trigger"
              f" (hub sessions trigger {session['sessionId']})", file=sys.stderr)
        return EXIT_OK
    return outcome_code(session)


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    body = read_instruction(args.file)
    client = app_client(settings, args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    created = client.call("POST", "/v1/sessions", body, headers)
    if args.json:
        print(json.dumps(created), flush=True)
    else:
        print(f"session {created['sessionId']} {created['status']}: "
              f"{created['audienceCount']} recipients, {created['duplicatesRemoved']} duplicates"
              " removed", flush=True)
    if args.no_follow or created["status"] not in ("queued", "running"):
        return EXIT_OK
    return _end(follow(client, created["sessionId"], _progress(args), args.interval))


def _show_text(s: dict[str, Any]) -> None:
    done, total, percent = figures(s)
    print(f"session {s['sessionId']}  {s['transport']}  {s['status']}")
    print(f"  recipients {s['audienceCount']} ({s['duplicatesRemoved']} duplicates removed),"
          f" trigger {s['trigger']}, run {s['run']}" + (f", xref {s['xref']}" if s.get("xref") else ""))
    times = [f"{k} {s[k]}" for k in ("createdAt", "scheduledTimestamp", "startedAt", "endedAt")
             if s.get(k)]
    print("  " + ", ".join(times))
    print(f"  progress {done}/{total} {percent}%  "
          + (counts_text(s.get("counts") or {}, ORDER) or "no deliveries yet"))


def cmd_sessions_list(settings: Settings, args: argparse.Namespace) -> int:
    query = {"limit": args.limit, **{k: v for k, v in (("status", args.status),
                                                       ("transport", args.transport)) if v}}
    items = app_client(settings, args).call("GET", f"/v1/sessions?{urlencode(query)}")["items"]
    emit(args, items, lambda rows: print_table(
        rows, ["sessionId", "transport", "status", "audienceCount", "xref", "createdAt"],
        empty="no sessions"))
    return EXIT_OK


def cmd_sessions_show(settings: Settings, args: argparse.Namespace) -> int:
    client = app_client(settings, args)
    session = client.call("GET", f"/v1/sessions/{args.id}")
    if not args.follow:
        emit(args, session, _show_text)
        return EXIT_OK
    if session["status"] not in FOLLOWED:  # already over, or waiting for a trigger
        emit(args, session, _show_text)
        return _end(session)
    if not args.json:
        _show_text(session)
    final = follow(client, args.id, _progress(args), args.interval)
    if args.json:
        print_json(final)
    return _end(final)


def cmd_sessions_action(settings: Settings, args: argparse.Namespace) -> int:
    suffix = "?includeFailed=true" if getattr(args, "include_failed", False) else ""
    session = app_client(settings, args).call(
        "POST", f"/v1/sessions/{args.id}/{args.action}{suffix}")
    emit(args, session, lambda s: print(f"session {s['sessionId']}: {args.action} accepted,"
                                        f" now {s['status']}"))
    return EXIT_OK


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    client: Client = app_client(settings, args)
    if args.csv:
        print(client.call("GET", f"/v1/sessions/{args.id}/report?format=csv"), end="")
        return EXIT_OK
    report = client.call("GET", f"/v1/sessions/{args.id}/report")
    if args.json:
        print(json.dumps(report))
    else:
        from hub.reports import to_text

        print(to_text(report))
    return EXIT_OK


def _follow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=positive_seconds, default=1.0, metavar="SECONDS",
                   help="how often to poll the session while following (default 1)")


def register(sub: Any) -> None:
    session_id = uuid_arg("session")
    s = command(sub, "send", help="submit an instruction file and follow its progress",
                description="Submit an instruction (a JSON file, DESIGN §2) as a new session and"
                " follow it with a progress bar until it ends.\nExit 0 when every recipient was"
                " delivered, 3 when some failed or were cancelled; Ctrl-C stops following,"
                " not the session.",
                examples="""
                hub send broadcast.json
                hub send broadcast.json --no-follow
                hub send broadcast.json --json > created.json   # the created session, one line
                hub send broadcast.json --idempotency-key campaign-42 || [ $? -eq 3 ]
                """)
    s.add_argument("file", metavar="FILE", help="the instruction, a JSON object"
                   ).complete = shtab.FILE  # type: ignore[attr-defined]
    add_json(s, "the created session (one line); progress then goes to stderr if it is a terminal")
    s.add_argument("--no-follow", action="store_true", help="submit and return at once")
    s.add_argument("--idempotency-key", metavar="KEY",
                   help="resubmitting with the same key and body replays the first answer")
    _follow_options(s)
    s.set_defaults(func=cmd_send)

    ss = command(sub, "sessions", help="list, show, follow, cancel, trigger, pause or resume sessions",
                 examples="""
                 hub sessions list --status running
                 hub sessions show SESSION --follow
                 hub sessions cancel SESSION
                 """).add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = command(ss, "list", help="the app's sessions, newest first", examples="""
                 hub sessions list
                 hub sessions list --limit 5 --status completed --transport email
                 hub sessions list --json | jq -r '.[].sessionId'
                 """)
    sl.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    sl.add_argument("--status", help="only sessions in this status (e.g. running)")
    sl.add_argument("--transport", help="only sessions of this transport type (e.g. voice)")
    add_json(sl, "the sessions")
    sl.set_defaults(func=cmd_sessions_list)
    sh = command(ss, "show", help="one session with its counts by delivery status",
                 description="Show one session; with --follow, a progress bar until it ends"
                 " (exit 0 when every recipient was delivered, 3 when some failed or were"
                 " cancelled; Ctrl-C stops following, not the session).",
                 examples="""
                 hub sessions show 3f2b8c1e-5d4a-4f7e-9c61-2a8b0d9e7f10
                 hub sessions show SESSION --follow
                 hub sessions show SESSION --follow --json   # waits, then the final session
                 """)
    sh.add_argument("id", metavar="SESSION", type=session_id, help="the session id")
    sh.add_argument("--follow", "-f", action="store_true", help="follow its progress until it ends")
    add_json(sh, "the session")
    _follow_options(sh)
    sh.set_defaults(func=cmd_sessions_show)
    for action, text in (("cancel", "cancel a session: no new attempts start"),
                         ("trigger", "start a manual session, or re-run failed recipients"),
                         ("pause", "pause a running session (no new attempts)"),
                         ("resume", "resume a paused session")):
        extra = "\nhub sessions trigger SESSION --include-failed" if action == "trigger" else ""
        sa = command(ss, action, help=text,
                     examples=f"hub sessions {action} SESSION\nhub sessions {action} SESSION --json"
                     + extra)
        sa.add_argument("id", metavar="SESSION", type=session_id, help="the session id")
        if action == "trigger":
            sa.add_argument("--include-failed", action="store_true",
                            help="re-run the failed recipients of a finished session")
        add_json(sa, "the session")
        sa.set_defaults(func=cmd_sessions_action, action=action)

    r = command(sub, "report", help="a session's report (text, JSON or CSV)", examples="""
                hub report SESSION
                hub report SESSION --json | jq .byStatus
                hub report SESSION --csv > report.csv
                """)
    r.add_argument("id", metavar="SESSION", type=session_id, help="the session id")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the report as JSON (stable, for scripts)")
    fmt.add_argument("--csv", action="store_true", help="one row per recipient, as CSV")
    r.set_defaults(func=cmd_report)
