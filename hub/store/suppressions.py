"""The app's do-not-contact list, checked for each batch of claimed recipients just
before their attempts (a worker's claim, a voice dialler's round)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from hub.store import pagination
from hub.store.db import Pool

ALL_TYPES = "*"


def view(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "address": row["address"],
        "transport": None if row["transport_type"] == ALL_TYPES else row["transport_type"],
        "reason": row["reason"],
        "createdAt": row["created_at"].isoformat(),
    }


async def add(
    pool: Pool, app_id: uuid.UUID, entries: Sequence[tuple[str, str | None]], reason: str | None
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "INSERT INTO suppressions (id, app_id, address, transport_type, reason)"
        " SELECT gen_random_uuid(), $1, a, t, $4 FROM unnest($2::text[], $3::text[]) AS u(a, t)"
        " ON CONFLICT (app_id, address, transport_type) DO UPDATE SET reason = excluded.reason"
        " RETURNING *",
        app_id, [a for a, _ in entries], [t or ALL_TYPES for _, t in entries], reason,
    )
    return [view(r) for r in rows]


async def list_(
    pool: Pool, app_id: uuid.UUID, *, limit: int, cursor: str | None, address: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    where, args = ["app_id = $1"], list[Any]([app_id])
    if address:
        args.append(address)
        where.append(f"address = ${len(args)}")
    if cursor:
        at, last = pagination.decode(cursor, 2)
        args += [at, uuid.UUID(last)]
        where.append(f"(created_at, id) > (${len(args) - 1}::timestamptz, ${len(args)})")
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT * FROM suppressions WHERE {' AND '.join(where)}"
        f" ORDER BY created_at, id LIMIT ${len(args)}", *args,
    )
    page, nxt = pagination.page_of(list(rows), limit,
                                   lambda r: [r["created_at"].isoformat(), str(r["id"])])
    return [view(r) for r in page], nxt


async def remove(pool: Pool, app_id: uuid.UUID, suppression_id: uuid.UUID) -> bool:
    done = await pool.execute(
        "DELETE FROM suppressions WHERE app_id = $1 AND id = $2", app_id, suppression_id
    )
    return bool(done.endswith(" 1"))


async def suppressed(
    conn: asyncpg.Connection, app_id: uuid.UUID, type_: str, addresses: Sequence[str]
) -> set[str]:
    rows = await conn.fetch(
        "SELECT address FROM suppressions WHERE app_id = $1 AND address = ANY($2::text[])"
        " AND transport_type IN ($3, '*')", app_id, list(addresses), type_,
    )
    return {r["address"] for r in rows}


async def suppressed_in_sessions(
    conn: asyncpg.Connection, type_: str, session_ids: Iterable[uuid.UUID],
    addresses: Iterable[str],
) -> set[tuple[uuid.UUID, str]]:
    """(session, address) pairs among these whose address is on the do-not-contact list
    of the session's app: one query for a batch of claimed recipients of many sessions."""
    rows = await conn.fetch(
        "SELECT s.id, x.address FROM sessions s JOIN suppressions x ON x.app_id = s.app_id"
        " WHERE s.id = ANY($1::uuid[]) AND x.address = ANY($2::text[])"
        " AND x.transport_type IN ($3, '*')", list(set(session_ids)), list(set(addresses)), type_,
    )
    return {(r["id"], r["address"]) for r in rows}


async def add_one(conn: asyncpg.Connection, app_id: uuid.UUID, address: str, type_: str | None,
                  reason: str) -> None:
    await conn.execute(
        "INSERT INTO suppressions (id, app_id, address, transport_type, reason)"
        " VALUES (gen_random_uuid(), $1, $2, $3, $4) ON CONFLICT DO NOTHING",
        app_id, address, type_ or ALL_TYPES, reason)
