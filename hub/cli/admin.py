"""`hub migrate`, `hub apps ...` and `hub transports ...`: setting the hub up.

`migrate` and `apps create` talk to the database directly (they run before any API key
exists); everything else goes through the API."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from hub.cli.client import app_client, operator_client
from hub.cli.output import (
    EXIT_OK,
    CliError,
    add_json,
    command,
    emit,
    one_line,
    print_json,
    print_table,
    reason,
    uuid_arg,
)
from hub.cli.output import EXIT_UNREACHABLE as UNREACHABLE
from hub.config import Settings

T = TypeVar("T")


def run_db(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """Runs `work` against the database; its failures become one-line errors."""
    import asyncpg

    from hub.net import without_credentials

    where = without_credentials(settings.database_url) or "(unset)"
    try:
        return asyncio.run(_awaited(work))
    except asyncpg.ClientConfigurationError as exc:
        raise CliError(f"HUB_DATABASE_URL {where} is not valid: {one_line(str(exc))}") from None
    except asyncpg.PostgresError as exc:
        hint = " (run `hub migrate` first)" if isinstance(exc, asyncpg.UndefinedTableError) else ""
        raise CliError(f"the database at {where} refused: {one_line(str(exc))}{hint}") from None
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        raise CliError(f"cannot reach the database at {where}: {reason(exc)}"
                       " (is PostgreSQL running? check HUB_DATABASE_URL)", UNREACHABLE) from None
    except ValueError as exc:  # e.g. a port that is not a number
        raise CliError(f"HUB_DATABASE_URL {where} is not valid: {one_line(str(exc))}") from None


async def _awaited(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from hub.store.db import migrate

    applied = run_db(settings, lambda: migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return EXIT_OK


def cmd_apps_create(settings: Settings, args: argparse.Namespace) -> int:
    from hub.store.apps import create_app
    from hub.store.db import create_pool

    async def go() -> Any:
        pool = await create_pool(settings.database_url, max_size=1)
        try:
            return await create_app(pool, args.name)
        finally:
            await pool.close()

    new = run_db(settings, go)
    out = {"appId": str(new.app_id), "apiKey": new.api_key, "webhookSecret": new.webhook_secret}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"app {args.name}: {out['appId']}\nAPI key (shown once): {out['apiKey']}\n"
              f"webhook secret: {out['webhookSecret']}")
    return EXIT_OK


def _keys_path(args: argparse.Namespace) -> str:
    return f"/v1/apps/{quote(args.app, safe='')}/keys"


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    items = operator_client(settings, args).call("GET", _keys_path(args))["items"]
    rows = [{**k, "state": "revoked" if k["revokedAt"] else "active",
             "prefix": f"{k['prefix']}..."} for k in items]
    emit(args, items, lambda _: print_table(rows, ["id", "prefix", "state", "createdAt", "revokedAt"],
                                            empty="no keys"))
    return EXIT_OK


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    key = operator_client(settings, args).call("POST", _keys_path(args))
    if args.json:
        print(json.dumps(key))
    else:
        print(f"key {key['id']}\nAPI key (shown once): {key['apiKey']}")
    return EXIT_OK


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    operator_client(settings, args).call("DELETE", f"{_keys_path(args)}/{args.key_id}")
    emit(args, {"id": args.key_id, "revoked": True},
         lambda _: print(f"key {args.key_id} revoked: it gets 401 from now on"))
    return EXIT_OK


def _trunks_path(args: argparse.Namespace) -> str:
    return f"/v1/apps/{quote(args.app, safe='')}/trunks"


def cmd_trunks_list(settings: Settings, args: argparse.Namespace) -> int:
    items = operator_client(settings, args).call("GET", _trunks_path(args))["items"]
    emit(args, items, lambda rows: print_table(rows, ["trunk", "createdAt"], empty="no trunks"))
    return EXIT_OK


def cmd_trunks_grant(settings: Settings, args: argparse.Namespace) -> int:
    grant = operator_client(settings, args).call("POST", _trunks_path(args), {"trunk": args.trunk})
    emit(args, grant, lambda _: print(f"trunk {args.trunk} granted to app {args.app}"))
    return EXIT_OK


def cmd_trunks_revoke(settings: Settings, args: argparse.Namespace) -> int:
    suffix = "?force=true" if args.force else ""
    operator_client(settings, args).call(
        "DELETE", f"{_trunks_path(args)}/{quote(args.trunk, safe='')}{suffix}")
    emit(args, {"appId": args.app, "trunk": args.trunk, "revoked": True},
         lambda _: print(f"trunk {args.trunk} revoked from app {args.app}"))
    return EXIT_OK


def cmd_transports_add(settings: Settings, args: argparse.Namespace) -> int:
    try:
        config = json.loads(args.config)
    except ValueError as exc:
        raise CliError(f"--config is not valid JSON: {one_line(str(exc))}") from None
    if not isinstance(config, dict):
        raise CliError("--config must be a JSON object, e.g. '{\"host\": \"127.0.0.1\"}'")
    body: dict[str, Any] = {"name": args.name, "type": args.type, "config": config}
    if args.default:
        body["default"] = True
    created = app_client(settings, args).call("POST", "/v1/transports", body)
    emit(args, created, lambda t: print(
        f"transport {t['id']} added: {t['type']} {t['name']}"
        + (" (default)" if t.get("default") else "")))
    return EXIT_OK


def cmd_transports_list(settings: Settings, args: argparse.Namespace) -> int:
    items = app_client(settings, args).call("GET", "/v1/transports")["items"]
    rows = [{**t, "default": "*" if t["default"] else ""} for t in items]
    if args.json:
        print_json(items)
    else:
        print_table(rows, ["default", "id", "type", "name", "provider"], empty="no transports")
    return EXIT_OK


def register(sub: Any) -> None:
    command(sub, "migrate", help="create or upgrade the database schema", examples="""
            hub migrate
            HUB_DATABASE_URL=postgresql://hub@db.example/hub hub migrate
            """).set_defaults(func=cmd_migrate)
    _register_apps(sub)
    _register_transports(sub)


def _register_apps(sub: Any) -> None:
    app_id, key_id = uuid_arg("app"), uuid_arg("key")
    apps = command(sub, "apps", help="apps, their API keys and their voice trunks", examples="""
                   hub apps create acme --json
                   hub apps keys list APP
                   hub apps trunks grant APP trunk
                   """).add_subparsers(dest="sub", required=True, metavar="ACTION")
    ac = command(apps, "create", help="create an app and its first API key (database access)",
                 examples="""
                 hub apps create acme
                 hub apps create acme --json | jq -r .apiKey
                 """)
    ac.add_argument("name")
    add_json(ac, '{"appId", "apiKey", "webhookSecret"}')
    ac.set_defaults(func=cmd_apps_create)

    keys = command(apps, "keys", help="an app's API keys: list|create|revoke (the admin key or"
                   " the app's own key)", examples="""
                   hub apps keys list APP
                   hub apps keys create APP --json
                   hub apps keys revoke APP KEY_ID
                   """).add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text, examples in (
            ("list", cmd_keys_list, "the app's keys, active and revoked",
             "hub apps keys list APP\nhub apps keys list APP --json"),
            ("create", cmd_keys_create, "mint a new key (shown once)",
             "hub apps keys create APP\nHUB_ADMIN_KEY=... hub apps keys create APP --json"),
            ("revoke", cmd_keys_revoke, "revoke a key: requests with it get 401 at once",
             "hub apps keys revoke APP KEY_ID")):
        kp = command(keys, name, help=text, examples=examples)
        kp.add_argument("app", metavar="APP", type=app_id, help="the app id")
        if name == "revoke":
            kp.add_argument("key_id", metavar="KEY_ID", type=key_id, help="the key to revoke")
        add_json(kp)
        kp.set_defaults(func=func)

    trunks = command(apps, "trunks", help="voice trunks granted to an app: grant|list|revoke"
                     " (admin key)", examples="""
                     hub apps trunks list APP
                     hub apps trunks grant APP carrier-a
                     hub apps trunks revoke APP carrier-a --force
                     """).add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (("list", cmd_trunks_list, "the trunks granted to the app"),
                             ("grant", cmd_trunks_grant, "let the app's voice transports use a trunk"),
                             ("revoke", cmd_trunks_revoke, "take a trunk grant back")):
        example = f"hub apps trunks {name} APP" + ("" if name == "list" else " TRUNK")
        tp = command(trunks, name, help=text, examples=f"{example}\n{example} --json")
        tp.add_argument("app", metavar="APP", type=app_id, help="the app id")
        if name != "list":
            tp.add_argument("trunk", metavar="TRUNK", help="a PJSIP endpoint")
        if name == "revoke":
            tp.add_argument("--force", action="store_true",
                            help="revoke even if voice transports of the app name the trunk")
        add_json(tp)
        tp.set_defaults(func=func)


def _register_transports(sub: Any) -> None:
    tr = command(sub, "transports", help="the app's transports (email, sms, voice, ...)",
                 examples="""
                 hub transports list
                 hub transports add --name smtp --type email --config '{"host": "127.0.0.1"}'
                 """).add_subparsers(dest="sub", required=True, metavar="ACTION")
    ta = command(tr, "add", help="register a transport", examples="""
                 hub transports add --name smtp --type email \\
                   --config '{"host": "127.0.0.1", "port": 25, "from": "hub@example.com"}'
                 hub transports add --name carrier --type voice --default \\
                   --config '{"trunk": "trunk", "callerId": "+15550100"}' --json
                 """)
    ta.add_argument("--name", required=True)
    ta.add_argument("--type", required=True, help="email, sms, whatsapp, slack, api or voice")
    ta.add_argument("--config", required=True, help="a JSON object (DESIGN §3)")
    ta.add_argument("--default", action="store_true", help="make it the app's default of its type")
    add_json(ta, "the transport")
    ta.set_defaults(func=cmd_transports_add)
    tl = command(tr, "list", help="the app's transports (* marks a type's default)", examples="""
                 hub transports list
                 hub transports list --json
                 """)
    add_json(tl, "the transports")
    tl.set_defaults(func=cmd_transports_list)
