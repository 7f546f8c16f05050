"""Dashboard logins: an opaque token per login, mapped to the API key that opened it.

The cookie carries the token; the table keeps only its SHA-256. A token is good while it
has not expired, has not been logged out, and its key is not revoked (checked on every
request, like the keys themselves).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from hub.store.apps import hash_key
from hub.store.db import Pool

TOKEN_BYTES = 32


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def open_login(pool: Pool, api_key: str, ttl_s: float) -> str | None:
    """A new token for a valid, unrevoked key; None when the key is not valid."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM dashboard_logins WHERE expires_at < now()")
        found = await conn.fetchval(
            "INSERT INTO dashboard_logins (token_hash, key_id, expires_at)"
            " SELECT $1, id, now() + make_interval(secs => $3) FROM api_keys"
            " WHERE key_hash = $2 AND revoked_at IS NULL RETURNING key_id",
            _hash(token), hash_key(api_key), float(ttl_s))
    return token if found is not None else None


async def app_for_token(pool: Pool, token: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await pool.fetchval(
        "SELECT k.app_id FROM dashboard_logins l JOIN api_keys k ON k.id = l.key_id"
        " WHERE l.token_hash = $1 AND l.expires_at > now() AND k.revoked_at IS NULL",
        _hash(token))
    return found


async def close_login(pool: Pool, token: str) -> None:
    await pool.execute("DELETE FROM dashboard_logins WHERE token_hash = $1", _hash(token))
