"""Voice trunk grants: the PJSIP endpoints the operator lets an app name in its voice
transports (besides HUB_OPEN_TRUNKS, open to every app)."""

from __future__ import annotations

import uuid
from typing import Any

from hub.store.db import Pool

_NAMING = ("SELECT id, name FROM transports WHERE app_id = $1 AND type = 'voice'"
           " AND config->>'trunk' = $2 ORDER BY created_at, id")


async def grant(pool: Pool, app_id: uuid.UUID, trunk: str) -> dict[str, Any] | None:
    """Grant (granting twice keeps the first); None when there is no such app."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM apps WHERE id = $1", app_id):
            return None
        await conn.execute("INSERT INTO trunk_grants (app_id, trunk) VALUES ($1, $2)"
                           " ON CONFLICT DO NOTHING", app_id, trunk)
        row = await conn.fetchrow("SELECT app_id, trunk, created_at FROM trunk_grants"
                                  " WHERE app_id = $1 AND trunk = $2", app_id, trunk)
    return dict(row)


async def list_(pool: Pool, app_id: uuid.UUID) -> list[dict[str, Any]] | None:
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM apps WHERE id = $1", app_id):
            return None
        rows = await conn.fetch("SELECT app_id, trunk, created_at FROM trunk_grants"
                                " WHERE app_id = $1 ORDER BY trunk", app_id)
    return [dict(r) for r in rows]


async def revoke(pool: Pool, app_id: uuid.UUID, trunk: str, *, force: bool
                 ) -> tuple[str, list[dict[str, Any]]]:
    """('revoked' | 'missing' | 'in-use', the app's voice transports that name the trunk).
    Without `force`, a grant that a transport still names is kept ('in-use')."""
    async with pool.acquire() as conn, conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM trunk_grants WHERE app_id = $1 AND trunk = $2"
                                     " FOR UPDATE", app_id, trunk)
        if not exists:
            return "missing", []
        naming = [dict(r) for r in await conn.fetch(_NAMING, app_id, trunk)]
        if naming and not force:
            return "in-use", naming
        await conn.execute("DELETE FROM trunk_grants WHERE app_id = $1 AND trunk = $2",
                           app_id, trunk)
    return "revoked", naming


async def is_granted(pool: Pool, app_id: uuid.UUID, trunk: str) -> bool:
    found = await pool.fetchval("SELECT 1 FROM trunk_grants WHERE app_id = $1 AND trunk = $2",
                                app_id, trunk)
    return found is not None
