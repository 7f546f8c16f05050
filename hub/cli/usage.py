"""`hub usage [--from DAY] [--to DAY] [--json]`: the app's usage per UTC day and transport."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlencode

from hub.cli.client import app_client
from hub.cli.output import add_json, command, print_json
from hub.config import Settings

COLUMNS = (("date", "date", 10), ("transport", "transport", 9), ("sessions", "sessions", 8),
           ("recipients", "recipients", 10), ("attempts", "attempts", 8),
           ("delivered", "delivered", 9), ("failed", "failed", 6),
           ("smsSegments", "segments", 8), ("callsAnswered", "answered", 8),
           ("billableSeconds", "billable_s", 10), ("inboundCallbacks", "callbacks", 9))


def to_table(answer: dict[str, Any]) -> str:
    """One line per day and transport, then the totals of the range."""
    items = answer["items"]
    head = "  ".join(f"{title:<{w}}" if i < 2 else f"{title:>{w}}"
                     for i, (_, title, w) in enumerate(COLUMNS))
    lines = [f"usage {answer['from']} .. {answer['to']} (UTC days)", head]
    for item in items:
        lines.append("  ".join(f"{item[k]:<{w}}" if i < 2 else f"{item[k]:>{w}}"
                               for i, (k, _, w) in enumerate(COLUMNS)))
    if not items:
        lines.append("(no usage in this range)")
        return "\n".join(lines)
    totals = ["total".ljust(COLUMNS[0][2]), "".ljust(COLUMNS[1][2])]
    totals += [f"{sum(item[k] for item in items):>{w}}" for k, _, w in COLUMNS[2:]]
    lines.append("  ".join(totals))
    return "\n".join(lines)


def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("from", args.date_from), ("to", args.date_to)) if v}
    path = "/v1/usage" + (f"?{urlencode(query)}" if query else "")
    answer = app_client(settings, args).call("GET", path)
    if args.json:
        print_json(answer)
    else:
        print(to_table(answer))
    return 0


def register(sub: Any) -> None:
    """Add `hub usage` to the CLI's subcommands."""
    u = command(
        sub, "usage", help="the app's usage per UTC day and transport",
        description="Sessions, recipients, attempts, delivered, failed, SMS segments, answered"
        " calls, billable seconds and inbound callbacks per UTC day and transport type.",
        examples="""
        hub usage                                   # the last 30 days
        hub usage --from 2026-11-01 --to 2026-11-30
        hub usage --from 2026-11-01 --json
        """)
    u.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                   help="first UTC day (default: 29 days before --to)")
    u.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD",
                   help="last UTC day, inclusive (default: today)")
    add_json(u, "the usage items")
    u.set_defaults(func=cmd_usage)
