"""Idempotency keys: the first answer to (app, key) is kept and replayed for `ttl_h` hours.

A request with a key holds a PostgreSQL advisory lock on (app, key), on its own
connection, for as long as it runs, and stores its answer in the same transaction as
what it created. There is no placeholder row: a request that dies (the process killed,
the connection lost) leaves nothing behind, because its transaction rolls back and its
lock goes with its connection; the next request with that key starts afresh.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from hub.store.db import Pool


@dataclass(frozen=True)
class Answer:
    """The stored answer of the first request with a key."""

    request_hash: bytes
    status: int
    body: Any


class Claim:
    """A key held by the running request. Work it commits goes through `conn`, in the
    transaction that also calls `answer`."""

    def __init__(self, conn: asyncpg.Connection, app_id: uuid.UUID, key: str,
                 request_hash: bytes, ttl_h: int) -> None:
        self.conn = conn
        self.app_id, self.key = app_id, key
        self.request_hash, self.ttl_h = request_hash, ttl_h

    async def previous(self) -> Answer | None:
        """The answer of an earlier request with this key, unless it has expired."""
        row = await self.conn.fetchrow(
            "SELECT request_hash, status_code, body FROM idempotency_keys"
            " WHERE app_id = $1 AND key = $2 AND created_at >= now() - make_interval(hours => $3)",
            self.app_id, self.key, self.ttl_h,
        )
        return Answer(row["request_hash"], row["status_code"], row["body"]) if row else None

    async def answer(self, status: int, body: Any) -> None:
        """Store this request's answer (replacing an expired one). Call it inside the
        transaction that commits the work, so both or neither are kept."""
        await self.conn.execute(
            "INSERT INTO idempotency_keys (app_id, key, request_hash, status_code, body)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, key) DO UPDATE SET"
            " request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code,"
            " body = EXCLUDED.body, created_at = now()",
            self.app_id, self.key, self.request_hash, status, body,
        )


def _lock_id(app_id: uuid.UUID, key: str) -> int:
    digest = hashlib.sha256(b"idempotency\0" + app_id.bytes + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def claim(pool: Pool, app_id: uuid.UUID, key: str, request_hash: bytes,
                ttl_h: int) -> AsyncIterator[Claim | None]:
    """Hold (app, key) for the duration of the block; None when another request holds it."""
    lock = _lock_id(app_id, key)
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
            yield None
            return
        try:
            yield Claim(conn, app_id, key, request_hash, ttl_h)
        finally:
            # Also released when the pool resets the connection or the connection drops.
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)
