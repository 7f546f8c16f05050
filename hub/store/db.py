"""Connection pool with JSON codecs, and the numbered-SQL migration runner."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

Pool: TypeAlias = asyncpg.Pool
MIGRATIONS_LOCK_ID = 0x4855_42  # advisory lock held while migrating ("HUB")
# The database could not be reached or answered with an error: worth trying again.
DATABASE_TROUBLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
FIRST_PAUSE_S = 0.2
LONGEST_PAUSE_S = 5.0


async def patiently(attempt: Callable[[], Awaitable[None]], tries: int,
                    what: Callable[[], str]) -> bool:
    """Run `attempt` until it succeeds, at most `tries` times; after each failure with the
    database (`DATABASE_TROUBLE`) a warning naming `what()` and a pause that doubles from
    FIRST_PAUSE_S up to LONGEST_PAUSE_S. True once it succeeded, False if it never did."""
    pause = FIRST_PAUSE_S
    for left in range(tries - 1, -1, -1):
        try:
            await attempt()
            return True
        except DATABASE_TROUBLE as exc:
            log.warning("%s failed%s: %s", what(), ", trying again" if left else "", exc)
            if left:  # no pause after the last try
                await asyncio.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE_S)
    return False


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's reset query (`pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL`, one round trip per checkout). asyncpg still rolls back a
    transaction left open and drops listeners. Nothing in the hub leaves session state on
    a pooled connection: advisory locks taken on one are transaction-scoped (`_xact_`),
    there is no SET, cursor or LISTEN outside a transaction (the migration lock and the
    lookup listener use connections of their own)."""


# Plan each statement for its own parameters and the tables as they are now. A cached
# generic plan is made once per connection, often while a new session's rows are still
# few (or before the table was ever analyzed), and kept: a batch update that was planned
# as a scan of a small table goes on scanning it as it grows. Batched statements can
# afford the planning; the API's small per-request statements keep their cached plans.
CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}


async def plan_afresh(conn: asyncpg.Connection) -> None:
    """For the rest of this transaction, plan every statement afresh (`CUSTOM_PLANS`)."""
    await conn.execute(f"SET LOCAL plan_cache_mode = {CUSTOM_PLANS['plan_cache_mode']}")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      custom_plans: bool = False) -> Pool:
    """A pool whose connections encode and decode json/jsonb as Python objects (and plan
    every statement afresh if `custom_plans`)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset,
        server_settings=CUSTOM_PLANS if custom_plans else None,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("hub.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database when it does not exist yet. True if it was created."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        finally:
            await admin.close()
        return True
    await conn.close()
    return False


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not applied yet, in order; safe to run twice or concurrently."""
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK_ID)
        await conn.close()
    return applied

