"""Apps and their API keys (stored as SHA-256 hashes; keys are shown once)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass

from hub.constants import API_KEY_PREFIX, WEBHOOK_SECRET_PREFIX
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


async def create_key(pool: Pool, app_id: uuid.UUID) -> str | None:
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM apps WHERE id = $1", app_id):
            return None
        return await _insert_key(conn, app_id)


async def _insert_key(conn: object, app_id: uuid.UUID) -> str:
    key = new_api_key()
    await conn.execute(  # type: ignore[attr-defined]
        "INSERT INTO api_keys (id, app_id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
        uuid.uuid4(), app_id, hash_key(key), key[:8],
    )
    return key


async def app_for_key(pool: Pool, key: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await pool.fetchval(
        "SELECT app_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key)
    )
    return found


async def webhook_secret(pool: Pool, app_id: uuid.UUID) -> str:
    secret: str = await pool.fetchval("SELECT webhook_secret FROM apps WHERE id = $1", app_id)
    return secret
