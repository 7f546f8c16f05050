"""Registered transports per app. Secrets live in their own column and never leave it
except to the sender that needs them."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from hub.store import lookups
from hub.store.db import Pool

PUBLIC_COLUMNS = "id, app_id, name, type, provider, config, is_default, created_at, updated_at"


def public(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "type": row["type"],
        "provider": row["provider"],
        "config": row["config"],
        "default": row["is_default"],
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


async def create(
    pool: Pool, app_id: uuid.UUID, *, name: str, type_: str, provider: str,
    config: dict[str, Any], secrets: dict[str, Any], default: bool | None,
) -> dict[str, Any] | None:
    """Insert; None when the name is taken. The first transport of a type is the default."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(app_id))
        if await conn.fetchval("SELECT 1 FROM transports WHERE app_id = $1 AND name = $2",
                               app_id, name):
            return None  # taken: change nothing (the app's default stays as it is)
        has_default = await conn.fetchval(
            "SELECT 1 FROM transports WHERE app_id = $1 AND type = $2 AND is_default", app_id, type_
        )
        make_default = bool(default) or not has_default
        if make_default:
            await conn.execute(
                "UPDATE transports SET is_default = false WHERE app_id = $1 AND type = $2",
                app_id, type_,
            )
        row = await conn.fetchrow(
            "INSERT INTO transports (id, app_id, name, type, provider, config, secrets, is_default)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (app_id, name) DO NOTHING"
            f" RETURNING {PUBLIC_COLUMNS}",
            uuid.uuid4(), app_id, name, type_, provider, config, secrets, make_default,
        )
        await lookups.announce(conn, app_id)
    return public(row) if row else None


async def list_(pool: Pool, app_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {PUBLIC_COLUMNS} FROM transports WHERE app_id = $1 ORDER BY created_at, id", app_id
    )
    return [public(r) for r in rows]


async def get(pool: Pool, app_id: uuid.UUID, transport_id: uuid.UUID) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {PUBLIC_COLUMNS} FROM transports WHERE app_id = $1 AND id = $2",
        app_id, transport_id,
    )
    return public(row) if row else None


async def get_full(pool: Pool, transport_id: uuid.UUID) -> dict[str, Any] | None:
    """Config merged with secrets: for senders only."""
    row = await pool.fetchrow("SELECT * FROM transports WHERE id = $1", transport_id)
    if row is None:
        return None
    return {**dict(row), "full_config": {**row["config"], **row["secrets"]}}


async def resolve(
    pool: Pool | asyncpg.Connection, app_id: uuid.UUID, type_: str, name: str | None,
    cache: lookups.LookupCache | None = None,
) -> dict[str, Any] | None:
    """The named transport of that type, or the app's default one (a found one may come
    from the lookup cache: do not change it)."""
    key = (app_id, type_, name or None)
    if cache is not None and (hit := cache.transport(key)) is not None:
        return hit
    generation = cache.generation if cache is not None else 0
    if name:
        row = await pool.fetchrow(
            "SELECT * FROM transports WHERE app_id = $1 AND type = $2 AND name = $3",
            app_id, type_, name,
        )
    else:
        row = await pool.fetchrow(
            "SELECT * FROM transports WHERE app_id = $1 AND type = $2 AND is_default",
            app_id, type_,
        )
    if row is None:
        return None
    found = dict(row)
    if cache is not None:
        cache.keep_transport(generation, key, found)
    return found


async def update(
    pool: Pool, app_id: uuid.UUID, transport_id: uuid.UUID, *, name: str | None,
    config: dict[str, Any] | None, secrets: dict[str, Any] | None, default: bool | None,
) -> dict[str, Any] | None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM transports WHERE app_id = $1 AND id = $2 FOR UPDATE", app_id, transport_id
        )
        if row is None:
            return None
        if default:
            await conn.execute(
                "UPDATE transports SET is_default = false WHERE app_id = $1 AND type = $2",
                app_id, row["type"],
            )
        row = await conn.fetchrow(
            "UPDATE transports SET name = coalesce($3, name), config = coalesce($4, config),"
            " secrets = coalesce($5, secrets), is_default = is_default OR coalesce($6, false),"
            f" updated_at = now() WHERE app_id = $1 AND id = $2 RETURNING {PUBLIC_COLUMNS}",
            app_id, transport_id, name, config, secrets, default,
        )
        await lookups.announce(conn, app_id)
    return public(row)


async def delete(pool: Pool, app_id: uuid.UUID, transport_id: uuid.UUID) -> str:
    """'deleted', 'missing', or 'in-use' (sessions still point at it)."""
    async with pool.acquire() as conn, conn.transaction():
        exists = await conn.fetchval(
            "SELECT 1 FROM transports WHERE app_id = $1 AND id = $2", app_id, transport_id
        )
        if not exists:
            return "missing"
        if await conn.fetchval("SELECT 1 FROM sessions WHERE transport_id = $1 LIMIT 1", transport_id):
            return "in-use"
        await conn.execute("DELETE FROM transports WHERE id = $1", transport_id)
        await lookups.announce(conn, app_id)
    return "deleted"
