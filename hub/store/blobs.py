"""Blobs stored by content hash, and the attachments a session sends (fetched once).

`session_attachments` runs its loader at most once per session, whatever the number of
jobs and workers: the first caller holds a per-session advisory lock while it loads,
records the result on the session and commits; the others wait, then read the record.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

ATTACHMENTS_LOCK_CLASS = 0x4855_4241  # first key of the per-session advisory lock ("HUBA")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    body: bytes


def _lock_key(session_id: uuid.UUID) -> int:
    return int.from_bytes(session_id.bytes[:4], "big", signed=True)


async def session_attachments(
    conn: asyncpg.Connection, session_id: uuid.UUID,
    load: Callable[[], Awaitable[Sequence[Attachment]]],
) -> list[Attachment]:
    """The session's attachments: read from the database, or loaded by `load()` (once)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)",
                           ATTACHMENTS_LOCK_CLASS, _lock_key(session_id))
        recorded = await conn.fetchval("SELECT attachments FROM sessions WHERE id = $1",
                                       session_id)
        if recorded is not None:
            return await _read(conn, recorded)
        loaded = list(await load())
        await _save(conn, session_id, loaded)
        return loaded


async def _read(conn: asyncpg.Connection, recorded: list[dict[str, str]]) -> list[Attachment]:
    hashes = [bytes.fromhex(a["sha256"]) for a in recorded]
    rows = await conn.fetch("SELECT sha256, body FROM blobs WHERE sha256 = ANY($1::bytea[])",
                            hashes)
    bodies = {bytes(r["sha256"]): bytes(r["body"]) for r in rows}
    return [Attachment(a["filename"], a["contentType"], bodies[h])
            for a, h in zip(recorded, hashes, strict=True)]


async def _save(conn: asyncpg.Connection, session_id: uuid.UUID,
                attachments: Sequence[Attachment]) -> None:
    record = []
    for att in attachments:
        digest = hashlib.sha256(att.body).digest()
        await conn.execute(
            "INSERT INTO blobs (sha256, content_type, size, body) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (sha256) DO NOTHING",
            digest, att.content_type, len(att.body), att.body,
        )
        record.append({"sha256": digest.hex(), "filename": att.filename,
                       "contentType": att.content_type})
    await conn.execute("UPDATE sessions SET attachments = $2 WHERE id = $1", session_id, record)
