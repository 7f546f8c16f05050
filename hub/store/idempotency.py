"""Idempotency keys: the first answer to (app, key) is kept and replayed for `ttl_h` hours.

A request with a key is validated first; then one statement (`guarded`, or
`guarded_many` for a batch of requests, one key each) takes a
transaction-scoped PostgreSQL advisory lock on (app, key), reads an earlier answer, and
stores this request's answer together with what it creates, which the statement's later
parts do only when the answer was stored. A large audience's COPY follows in the same
transaction, which holds the lock until it commits. There is no placeholder row: a
request that dies (the process killed, the connection lost) leaves nothing behind,
because its transaction rolls back and the lock goes with it; the next request with that
key starts afresh. Nothing outlives the transaction on the connection, so the pool needs
no reset query when it takes the connection back.

The lock answers "still running" (409) while another request holds the key; the unique
key (`ON CONFLICT`) is what keeps a second answer out: the statement reads earlier
answers in the snapshot it started with, so one committed just before this request took
the lock is found by the conflict instead, and the request reads it again (`previous`).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

GUARD_PARAMS = 7  # the parameters `guarded` takes, from its first


@dataclass(frozen=True)
class Answer:
    """The stored answer of the first request with a key."""

    request_hash: bytes
    status: int
    body: Any


@dataclass(frozen=True)
class Key:
    """An Idempotency-Key as one app sent it with one request body."""

    app_id: uuid.UUID
    key: str
    request_hash: bytes
    ttl_h: int

    @property
    def lock_id(self) -> int:
        return _lock_id(self.app_id, self.key)

    def params(self, status: int, body: Any) -> tuple[Any, ...]:
        """`guarded`'s parameters, storing (status, body) as this request's answer."""
        return (self.lock_id, self.app_id, self.key, self.request_hash, self.ttl_h, status,
                body)


@dataclass(frozen=True)
class Outcome:
    """What `guarded` found: `stored` (this request's answer, and what it created, are
    kept), else an earlier `previous` answer, else `held` False when another request holds
    the key. None of them: an answer committed just before this request took the key
    (read it with `previous`)."""

    held: bool
    stored: bool
    previous: Answer | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> Outcome:
        seen = (Answer(row["request_hash"], row["status_code"], row["body"])
                if row["status_code"] is not None else None)
        return cls(held=row["held"], stored=row["stored"], previous=seen)


def guarded(first: int) -> str:
    """The statement's opening CTEs, with parameters `$first`... (`Key.params`): `held`
    (the advisory lock), `prev` (an unexpired earlier answer) and `k`, which has a row only
    when this request's answer was stored (new, or replacing an expired one): what the
    request creates selects FROM k. End the statement with `OUTCOME`."""
    lock, app, key, hash_, ttl, status, body = (f"${first + i}" for i in range(GUARD_PARAMS))
    fresh = f"now() - make_interval(hours => {ttl}::int)"
    return (
        f"WITH held AS (SELECT pg_try_advisory_xact_lock({lock}::bigint) AS ok),"
        " prev AS (SELECT request_hash, status_code, body FROM idempotency_keys"
        f"  WHERE app_id = {app}::uuid AND key = {key}::text AND created_at >= {fresh}),"
        " k AS (INSERT INTO idempotency_keys (app_id, key, request_hash, status_code, body)"
        f"  SELECT {app}::uuid, {key}::text, {hash_}::bytea, {status}::int, {body}::jsonb"
        "  FROM held WHERE held.ok AND NOT EXISTS (SELECT 1 FROM prev)"
        "  ON CONFLICT (app_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
        "  status_code = EXCLUDED.status_code, body = EXCLUDED.body, created_at = now()"
        f"  WHERE idempotency_keys.created_at < {fresh}"
        "  RETURNING 1)")


OUTCOME = (" SELECT (SELECT ok FROM held) AS held, EXISTS (SELECT 1 FROM k) AS stored,"
           " p.request_hash, p.status_code, p.body FROM (SELECT) AS one"
           " LEFT JOIN prev AS p ON true")


def guarded_many(first: int) -> str:
    """`guarded` for many requests at once (one key each), with parameters `$first`...:
    arrays of the sessions' ids, lock ids, app ids, keys, request hashes, answers' status
    codes and bodies (JSON text), then the keys' lifetime in hours. `ki` lists the keyed
    sessions and `stored` those whose answer was stored: what a request creates is
    selected where its session is not keyed or was stored (`kept`). End with `OUTCOMES`."""
    sid, lock, app, key, hash_, status, body, ttl = (f"${first + i}" for i in range(8))
    fresh = f"now() - make_interval(hours => {ttl}::int)"
    return (
        f"WITH ki AS (SELECT * FROM unnest({sid}::uuid[], {lock}::bigint[], {app}::uuid[],"
        f"  {key}::text[], {hash_}::bytea[], {status}::int[], {body}::text[])"
        "  AS t(sid, lock, app_id, key, request_hash, status_code, body)),"
        " held AS (SELECT sid, pg_try_advisory_xact_lock(lock) AS ok FROM ki),"
        " prev AS (SELECT ki.sid, p.request_hash, p.status_code, p.body"
        "  FROM ki JOIN idempotency_keys AS p ON p.app_id = ki.app_id AND p.key = ki.key"
        f"  AND p.created_at >= {fresh}),"
        " k AS (INSERT INTO idempotency_keys (app_id, key, request_hash, status_code, body)"
        "  SELECT ki.app_id, ki.key, ki.request_hash, ki.status_code, ki.body::jsonb"
        "  FROM ki JOIN held USING (sid)"
        "  WHERE held.ok AND NOT EXISTS (SELECT 1 FROM prev WHERE prev.sid = ki.sid)"
        "  ON CONFLICT (app_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
        "  status_code = EXCLUDED.status_code, body = EXCLUDED.body, created_at = now()"
        f"  WHERE idempotency_keys.created_at < {fresh}"
        "  RETURNING app_id, key),"
        " stored AS (SELECT ki.sid FROM ki JOIN k USING (app_id, key))")


def kept(session_id: str) -> str:
    """In `guarded_many`'s statement: the session `session_id` (an SQL expression) is to be
    created (it has no key, or its answer was stored)."""
    return (f"(NOT EXISTS (SELECT 1 FROM ki WHERE ki.sid = {session_id})"
            f" OR EXISTS (SELECT 1 FROM stored WHERE stored.sid = {session_id}))")


OUTCOMES = (" SELECT ki.sid, held.ok AS held,"
            " EXISTS (SELECT 1 FROM stored WHERE stored.sid = ki.sid) AS stored,"
            " prev.request_hash, prev.status_code, prev.body"
            " FROM ki JOIN held USING (sid) LEFT JOIN prev USING (sid)")


async def answer(conn: asyncpg.Connection, key: Key, status: int, body: Any) -> Outcome:
    """Keep (status, body) as the key's answer, creating nothing else (a refusal)."""
    row = await conn.fetchrow(guarded(1) + OUTCOME, *key.params(status, body))
    return Outcome.of(row)


async def previous(conn: asyncpg.Connection | asyncpg.Pool, key: Key) -> Answer | None:
    """The key's unexpired answer, read now."""
    row = await conn.fetchrow(
        "SELECT request_hash, status_code, body FROM idempotency_keys"
        " WHERE app_id = $1 AND key = $2 AND created_at >= now() - make_interval(hours => $3)",
        key.app_id, key.key, key.ttl_h,
    )
    return Answer(row["request_hash"], row["status_code"], row["body"]) if row else None


def _lock_id(app_id: uuid.UUID, key: str) -> int:
    digest = hashlib.sha256(b"idempotency\0" + app_id.bytes + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
