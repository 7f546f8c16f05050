"""`hub`: run the processes and operate the hub. `hub --help` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hub import logs
from hub.cli.client import ApiError, Client
from hub.config import Settings, load_settings

FINAL_SESSION = ("completed", "cancelled")


def _client(settings: Settings, args: argparse.Namespace) -> Client:
    key = args.api_key or settings.api_key
    if not key:
        raise SystemExit("hub: an API key is needed: --api-key KEY or HUB_API_KEY")
    return Client(args.api_url or settings.client_api_url, key)


def _operator_client(settings: Settings, args: argparse.Namespace) -> Client:
    """For `hub apps keys|trunks`: --api-key, else the admin key, else the app's own key."""
    key = args.api_key or settings.admin_key or settings.api_key
    if not key:
        raise SystemExit("hub: a key is needed: --api-key KEY, HUB_ADMIN_KEY or HUB_API_KEY")
    return Client(args.api_url or settings.client_api_url, key)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
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
        _print(rows)
    else:
        asterisk.print_table(rows, ["id", "state", "number", "sessionId", "durationS", "name"])
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
        _print(rows)
    else:
        asterisk.print_table(rows, ["endpoint", "state", "contact", "qualify", "rttMs",
                                    "activeCalls", "heldChannels", "cap", "cps", "lastProblem"])
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from hub.store.db import migrate

    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_apps_create(settings: Settings, args: argparse.Namespace) -> int:
    from hub.store.apps import create_app
    from hub.store.db import create_pool

    async def go() -> Any:
        pool = await create_pool(settings.database_url, max_size=1)
        try:
            return await create_app(pool, args.name)
        finally:
            await pool.close()

    new = asyncio.run(go())
    out = {"appId": str(new.app_id), "apiKey": new.api_key, "webhookSecret": new.webhook_secret}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"app {args.name}: {out['appId']}\nAPI key (shown once): {out['apiKey']}\n"
              f"webhook secret: {out['webhookSecret']}")
    return 0


def cmd_apps_keys(settings: Settings, args: argparse.Namespace) -> int:
    client = _operator_client(settings, args)
    path = f"/v1/apps/{quote(args.app, safe='')}/keys"
    if args.action == "create":
        key = client.call("POST", path)
        if args.json:
            print(json.dumps(key))
        else:
            print(f"key {key['id']}\nAPI key (shown once): {key['apiKey']}")
    elif args.action == "revoke":
        if not args.key_id:
            raise SystemExit("hub: apps keys revoke needs APP and KEY_ID")
        client.call("DELETE", f"{path}/{quote(args.key_id, safe='')}")
        print(f"key {args.key_id} revoked")
    else:
        items = client.call("GET", path)["items"]
        if args.json:
            _print(items)
        for k in [] if args.json else items:
            state = f"revoked {k['revokedAt']}" if k["revokedAt"] else "active"
            print(f"{k['id']}  {k['prefix']}...  created {k['createdAt']}  {state}")
    return 0


def cmd_apps_trunks(settings: Settings, args: argparse.Namespace) -> int:
    client = _operator_client(settings, args)
    path = f"/v1/apps/{quote(args.app, safe='')}/trunks"
    if args.action == "list":
        items = client.call("GET", path)["items"]
        if args.json:
            _print(items)
        for g in [] if args.json else items:
            print(f"{g['trunk']}  granted {g['createdAt']}")
        return 0
    if not args.trunk:
        raise SystemExit(f"hub: apps trunks {args.action} needs APP and TRUNK")
    if args.action == "grant":
        client.call("POST", path, {"trunk": args.trunk})
        print(f"trunk {args.trunk} granted to app {args.app}")
    else:
        suffix = "?force=true" if args.force else ""
        client.call("DELETE", f"{path}/{quote(args.trunk, safe='')}{suffix}")
        print(f"trunk {args.trunk} revoked from app {args.app}")
    return 0


def cmd_transports_add(settings: Settings, args: argparse.Namespace) -> int:
    body = {"name": args.name, "type": args.type, "config": json.loads(args.config)}
    if args.default:
        body["default"] = True
    _print(_client(settings, args).call("POST", "/v1/transports", body))
    return 0


def cmd_transports_list(settings: Settings, args: argparse.Namespace) -> int:
    items = _client(settings, args).call("GET", "/v1/transports")["items"]
    if args.json:
        _print(items)
        return 0
    for t in items:
        mark = "*" if t["default"] else " "
        print(f"{mark} {t['id']}  {t['type']:<8} {t['name']:<20} {t['provider']}")
    return 0


def _progress(session: dict[str, Any]) -> str:
    counts = session.get("counts", {})
    total = session["audienceCount"] or 1
    done = sum(counts.get(s, 0) for s in ("delivered", "failed", "cancelled"))
    width = 30
    filled = int(width * done / total)
    bar = "#" * filled + "-" * (width - filled)
    parts = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return f"[{bar}] {done}/{total} {session['status']} {parts}"


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    body = json.loads(Path(args.file).read_text())
    client = _client(settings, args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    created = client.call("POST", "/v1/sessions", body, headers)
    if args.json:
        print(json.dumps(created))
    else:
        print(f"session {created['sessionId']} {created['status']}: "
              f"{created['audienceCount']} recipients, {created['duplicatesRemoved']} duplicates removed")
    if args.no_follow or created["status"] not in ("queued", "running"):
        return 0
    while True:
        session = client.call("GET", f"/v1/sessions/{created['sessionId']}")
        if not args.json:
            print("\r" + _progress(session), end="", file=sys.stderr, flush=True)
        if session["status"] in FINAL_SESSION:
            if not args.json:
                print(file=sys.stderr)
            return 0
        time.sleep(args.interval)


def cmd_sessions(settings: Settings, args: argparse.Namespace) -> int:
    client = _client(settings, args)
    if args.action == "list":
        items = client.call("GET", f"/v1/sessions?limit={args.limit}")["items"]
        if args.json:
            _print(items)
        for s in [] if args.json else items:
            print(f"{s['sessionId']}  {s['transport']:<8} {s['status']:<17} "
                  f"{s['audienceCount']:>8}  {s['createdAt']}")
        return 0
    if not args.id:
        raise SystemExit(f"hub: sessions {args.action} needs a SESSION id")
    if args.action == "show":
        _print(client.call("GET", f"/v1/sessions/{args.id}"))
    else:
        suffix = "?includeFailed=true" if getattr(args, "include_failed", False) else ""
        _print(client.call("POST", f"/v1/sessions/{args.id}/{args.action}{suffix}"))
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    client = _client(settings, args)
    if args.csv:
        print(client.call("GET", f"/v1/sessions/{args.id}/report?format=csv"), end="")
        return 0
    report = client.call("GET", f"/v1/sessions/{args.id}/report")
    if args.json:
        print(json.dumps(report))
    else:
        from hub.reports import to_text

        print(to_text(report))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from hub.demo import run_demo

    return run_demo(settings)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hub", description="Connect Hub operator CLI")
    p.add_argument("--api-url", help="the hub API (default HUB_API_URL or HUB_PUBLIC_URL)")
    p.add_argument("--api-key", help="an app's API key (default HUB_API_KEY)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("api", help="run the HTTP API").set_defaults(func=cmd_api)
    w = sub.add_parser("worker", help="run an RQ worker with the reconciler")
    w.add_argument("--queues", help="comma-separated queues (default: all but voice)")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.set_defaults(func=cmd_worker)
    sub.add_parser("voice", help="run the ARI voice controller").set_defaults(func=cmd_voice)
    dev = sub.add_parser("dev", help="embedded Asterisk for development: up|down|status")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--json", action="store_true")
    dev.set_defaults(func=cmd_dev)
    for name, func, text in (("calls", cmd_calls, "live channels on Asterisk (ARI)"),
                             ("trunks", cmd_trunks, "PJSIP endpoints and their active calls")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=func)
        if name == "calls":
            hang = sp.add_subparsers(dest="sub").add_parser("hangup", help="end a live call")
            hang.add_argument("id", metavar="ID", help="the channel id (hub calls)")
            hang.add_argument("--retry", action="store_true", help="leave it to the retry policy")
            hang.set_defaults(func=cmd_calls_hangup)
    ast = sub.add_parser("asterisk", help='run an Asterisk CLI command over AMI, e.g. "core show'
                         ' channels"')
    ast.add_argument("cli", nargs="+", metavar="COMMAND")
    ast.set_defaults(func=cmd_asterisk)
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        func=cmd_migrate)
    apps = sub.add_parser("apps").add_subparsers(dest="sub", required=True)
    ac = apps.add_parser("create", help="create an app and its first API key")
    ac.add_argument("name")
    ac.add_argument("--json", action="store_true")
    ac.set_defaults(func=cmd_apps_create)
    ak = apps.add_parser("keys", help="an app's API keys: list|create|revoke (admin key or"
                         " the app's own key)")
    ak.add_argument("action", choices=["list", "create", "revoke"])
    ak.add_argument("app", metavar="APP", help="the app id")
    ak.add_argument("key_id", metavar="KEY_ID", nargs="?", help="the key to revoke")
    ak.add_argument("--json", action="store_true")
    ak.set_defaults(func=cmd_apps_keys)
    at = apps.add_parser("trunks", help="voice trunks granted to an app: grant|list|revoke"
                         " (admin key)")
    at.add_argument("action", choices=["grant", "list", "revoke"])
    at.add_argument("app", metavar="APP", help="the app id")
    at.add_argument("trunk", metavar="TRUNK", nargs="?", help="a PJSIP endpoint")
    at.add_argument("--force", action="store_true",
                    help="revoke even if voice transports of the app name the trunk")
    at.add_argument("--json", action="store_true")
    at.set_defaults(func=cmd_apps_trunks)
    tr = sub.add_parser("transports").add_subparsers(dest="sub", required=True)
    ta = tr.add_parser("add", help="register a transport")
    ta.add_argument("--name", required=True)
    ta.add_argument("--type", required=True)
    ta.add_argument("--config", required=True, help="JSON object")
    ta.add_argument("--default", action="store_true")
    ta.set_defaults(func=cmd_transports_add)
    tl = tr.add_parser("list")
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(func=cmd_transports_list)
    s = sub.add_parser("send", help="submit an instruction file and follow its progress")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-follow", action="store_true")
    s.add_argument("--idempotency-key")
    s.add_argument("--interval", type=float, default=1.0)
    s.set_defaults(func=cmd_send)
    ss = sub.add_parser("sessions", help="list|show|cancel|trigger|pause|resume")
    ss.add_argument("action", choices=["list", "show", "cancel", "trigger", "pause", "resume"])
    ss.add_argument("id", nargs="?")
    ss.add_argument("--limit", type=int, default=20)
    ss.add_argument("--include-failed", action="store_true")
    ss.add_argument("--json", action="store_true")
    ss.set_defaults(func=cmd_sessions)
    r = sub.add_parser("report", help="a session's report")
    r.add_argument("id")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    r.set_defaults(func=cmd_report)
    sub.add_parser("demo", help="run the demo broadcast end to end").set_defaults(func=cmd_demo)
    return p


def _one_line(exc: ApiError) -> str:
    """`HTTP 422: message (config.trunk: why; ...)`: an API error on one line."""
    details = exc.body.get("details") if isinstance(exc.body, dict) else None
    if isinstance(details, list):
        parts = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" if isinstance(d, dict)
                 else str(d) for d in details]
        return f"{exc} ({'; '.join(parts)})".replace("\n", " ")
    if details:
        return f"{exc} ({json.dumps(details)})".replace("\n", " ")
    return str(exc).replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    logs.configure(settings.log_level)
    try:
        return int(args.func(settings, args))
    except ApiError as exc:
        print(f"hub: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
