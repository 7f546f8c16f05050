"""Apps and their API keys (stored as SHA-256 hashes; keys are shown once). A found key may
be kept a moment in the API process's lookup cache (hub.store.lookups); revoking it
announces the change, so every process drops it before its next request."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.constants import API_KEY_PREFIX, WEBHOOK_SECRET_PREFIX
from hub.store import lookups
from hub.store.db import Pool


@dataclass(frozen=True)
class NewApp:
    app_id: uuid.UUID
    name: str
    api_key: str
    webhook_secret: str


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


async def create_app(pool: Pool, name: str) -> NewApp:
    app_id = uuid.uuid4()
    secret = WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO apps (id, name, webhook_secret) VALUES ($1, $2, $3)", app_id, name, secret
        )
        key = await _insert_key(conn, app_id)
    return NewApp(app_id, name, key, secret)


@dataclass(frozen=True)
class NewKey:
    key_id: uuid.UUID
    api_key: str
    prefix: str
    created_at: datetime


async def create_key(pool: Pool, app_id: uuid.UUID, max_active: int | None) -> NewKey | str:
    """A new key, or 'missing' (no such app) or 'limit' (`max_active` keys are active)."""
    async with pool.acquire() as conn, conn.transaction():
        # The app's row lock makes concurrent mints count one after the other.
        if not await conn.fetchval("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE", app_id):
            return "missing"
        if max_active is not None and await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE app_id = $1 AND revoked_at IS NULL", app_id
        ) >= max_active:
            return "limit"
        key = new_api_key()
        row = await conn.fetchrow(
            "INSERT INTO api_keys (id, app_id, key_hash, prefix) VALUES ($1, $2, $3, $4)"
            " RETURNING id, prefix, created_at",
            uuid.uuid4(), app_id, hash_key(key), key[:8],
        )
    return NewKey(row["id"], key, row["prefix"], row["created_at"])


async def _insert_key(conn: object, app_id: uuid.UUID) -> str:
    key = new_api_key()
    await conn.execute(  # type: ignore[attr-defined]
        "INSERT INTO api_keys (id, app_id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
        uuid.uuid4(), app_id, hash_key(key), key[:8],
    )
    return key


async def list_keys(pool: Pool, app_id: uuid.UUID) -> list[dict[str, Any]] | None:
    """The app's keys (never their hashes), oldest first; None when there is no such app."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM apps WHERE id = $1", app_id):
            return None
        rows = await conn.fetch(
            "SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE app_id = $1"
            " ORDER BY created_at, id", app_id)
    return [dict(r) for r in rows]


async def revoke_key(pool: Pool, app_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    """Revoke, at once: the same statement announces the change to the lookup caches.
    False when the app has no such key; revoking twice keeps the first time."""
    found = await pool.fetchval(
        "WITH r AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
        " WHERE app_id = $1 AND id = $2 RETURNING id)"
        " SELECT r.id FROM r, pg_notify($3, $1::text) AS n", app_id, key_id, lookups.CHANNEL)
    return found is not None


async def app_for_key(pool: Pool, key: str,
                      cache: lookups.LookupCache | None = None) -> uuid.UUID | None:
    """The app of an active key (None if unknown or revoked)."""
    key_hash = hash_key(key)
    if cache is not None and (hit := cache.app_for_key(key_hash)) is not None:
        return hit
    generation = cache.generation if cache is not None else 0
    found: uuid.UUID | None = await pool.fetchval(
        "SELECT app_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
    if cache is not None and found is not None:
        cache.keep_key(generation, key_hash, found)
    return found


async def webhook_secret(pool: Pool, app_id: uuid.UUID) -> str:
    secret: str = await pool.fetchval("SELECT webhook_secret FROM apps WHERE id = $1", app_id)
    return secret
