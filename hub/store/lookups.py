"""Short-lived per-process caches of the two lookups every submission makes: API key → app
and (app, transport type, name) → transport.

Only found rows are kept (a new key or transport is seen at once), for `ttl_s` seconds at
most. Every change that could make an entry wrong (a key revoked; a transport created,
changed or deleted) calls `announce` in its own transaction: PostgreSQL delivers the
NOTIFY at commit to every API process, whose `listen` task drops that app's entries. The
process that made the change also drops them itself before it answers, so the change holds
for its next request. Another replica may use a stale entry only for the few milliseconds
the notification takes to arrive; while its listening connection is down it caches nothing
(each lookup goes to the database) until the connection is back.

A fill races with a change: a lookup that read the database before a change committed must
not store what it read after the change was announced. Each fill takes the cache's
generation before it reads and keeps its result only if no change came in meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import asyncpg

from hub.store.db import DATABASE_TROUBLE

log = logging.getLogger(__name__)

CHANNEL = "hub_lookups"
MAX_ENTRIES = 10_000
RECONNECT_S = 1.0

TransportKey = tuple[uuid.UUID, str, str | None]


class LookupCache:
    """Found keys and transports, each kept `ttl_s` seconds (0 turns caching off)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.generation = 0
        # Off until a listener is connected (`listen` turns it on), so that no entry is
        # kept that a change elsewhere could not drop.
        self.live = False
        self._keys: dict[bytes, tuple[float, uuid.UUID]] = {}
        self._transports: dict[TransportKey, tuple[float, dict[str, Any]]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.live

    def app_for_key(self, key_hash: bytes) -> uuid.UUID | None:
        hit = self._keys.get(key_hash)
        if hit is None or not self.enabled or hit[0] < time.monotonic():
            return None
        return hit[1]

    def keep_key(self, generation: int, key_hash: bytes, app_id: uuid.UUID) -> None:
        if self._may_keep(generation, self._keys):
            self._keys[key_hash] = (time.monotonic() + self.ttl_s, app_id)

    def transport(self, key: TransportKey) -> dict[str, Any] | None:
        hit = self._transports.get(key)
        if hit is None or not self.enabled or hit[0] < time.monotonic():
            return None
        return hit[1]

    def keep_transport(self, generation: int, key: TransportKey, row: dict[str, Any]) -> None:
        if self._may_keep(generation, self._transports):
            self._transports[key] = (time.monotonic() + self.ttl_s, row)

    def _may_keep(self, generation: int, table: dict[Any, Any]) -> bool:
        if not self.enabled or generation != self.generation:
            return False
        if len(table) >= MAX_ENTRIES:
            table.clear()
        return True

    def forget(self, app_id: uuid.UUID | None = None) -> None:
        """Drop the entries of `app_id` (of every app when None); fills under way are void."""
        self.generation += 1
        if app_id is None:
            self._keys.clear()
            self._transports.clear()
            return
        for key_hash in [k for k, v in self._keys.items() if v[1] == app_id]:
            del self._keys[key_hash]
        for tkey in [k for k in self._transports if k[0] == app_id]:
            del self._transports[tkey]

    def on_notify(self, payload: str) -> None:
        try:
            self.forget(uuid.UUID(payload))
        except ValueError:
            self.forget()

    def suspend(self) -> None:
        self.live = False
        self.forget()


async def announce(conn: asyncpg.Connection, app_id: uuid.UUID) -> None:
    """Tell every API process that `app_id`'s keys or transports changed (at commit)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(app_id))


async def listen(dsn: str, cache: LookupCache) -> None:
    """Keep a connection LISTENing for changes; runs until cancelled. The cache is live
    only while the connection is up."""
    if cache.ttl_s <= 0:
        return
    while True:
        try:
            await _listen_once(dsn, cache)
        except (*DATABASE_TROUBLE, TimeoutError) as exc:
            log.warning("lookup cache listener lost (%s: %s); caching off until it is back",
                        type(exc).__name__, exc)
        await asyncio.sleep(RECONNECT_S)


async def _listen_once(dsn: str, cache: LookupCache) -> None:
    """One listening connection, until it is lost (the cache is off from then on)."""
    lost = asyncio.Event()
    conn = await asyncpg.connect(dsn)
    try:
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: cache.on_notify(payload))
        cache.forget()  # whatever changed while nobody listened
        cache.live = True
        while not lost.is_set() and not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), RECONNECT_S)
            if not lost.is_set() and not conn.is_closed():
                # A cheap round trip notices a dead peer that never closed the socket.
                await asyncio.wait_for(conn.execute("SELECT 1"), RECONNECT_S * 5)
    finally:
        cache.suspend()
        if not conn.is_closed():
            conn.terminate()
