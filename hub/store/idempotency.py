"""Idempotency keys: the first answer to (app, key) is kept and replayed for 24 h."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from hub.store.db import Pool


@dataclass(frozen=True)
class Seen:
    state: str  # "new" | "replay" | "mismatch" | "running"
    status: int | None = None
    body: Any = None


async def begin(pool: Pool, app_id: uuid.UUID, key: str, request_hash: bytes, ttl_h: int) -> Seen:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE app_id = $1 AND key = $2"
            " AND created_at < now() - make_interval(hours => $3)", app_id, key, ttl_h,
        )
        inserted = await conn.fetchval(
            "INSERT INTO idempotency_keys (app_id, key, request_hash) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING 1", app_id, key, request_hash,
        )
        if inserted:
            return Seen("new")
        row = await conn.fetchrow(
            "SELECT * FROM idempotency_keys WHERE app_id = $1 AND key = $2", app_id, key
        )
    if row is None:
        return Seen("running")
    if row["request_hash"] != request_hash:
        return Seen("mismatch")
    if row["status_code"] is None:
        return Seen("running")
    return Seen("replay", row["status_code"], row["body"])


async def finish(pool: Pool, app_id: uuid.UUID, key: str, status: int, body: Any) -> None:
    await pool.execute(
        "UPDATE idempotency_keys SET status_code = $3, body = $4 WHERE app_id = $1 AND key = $2",
        app_id, key, status, body,
    )


async def forget(pool: Pool, app_id: uuid.UUID, key: str) -> None:
    await pool.execute("DELETE FROM idempotency_keys WHERE app_id = $1 AND key = $2", app_id, key)
