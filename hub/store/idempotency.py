"""Idempotency keys: the first answer to (app, key) is kept and replayed for `ttl_h` hours.

A request with a key runs in one transaction that holds a transaction-scoped PostgreSQL
advisory lock on (app, key) and stores its answer together with what it created. There is
no placeholder row: a request that dies (the process killed, the connection lost) leaves
nothing behind, because its transaction rolls back and the lock goes with it; the next
request with that key starts afresh. Nothing outlives the transaction on the connection,
so the pool needs no reset query when it takes the connection back.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


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


async def claim(conn: asyncpg.Connection, app_id: uuid.UUID, key: str, request_hash: bytes,
                ttl_h: int) -> Claim | None:
    """Hold (app, key) until the end of `conn`'s transaction (which must be open); None
    when another request holds it."""
    if not conn.is_in_transaction():
        raise RuntimeError("an idempotency claim needs an open transaction")
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _lock_id(app_id, key)):
        return None
    return Claim(conn, app_id, key, request_hash, ttl_h)
