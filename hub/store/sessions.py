"""Sessions: creation with their deliveries (one statement for a small audience, COPY in
one transaction for a large one), reads, and the status transitions of DESIGN §4 as
conditional updates."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from hub import constants as c
from hub.instruction import ValidInstruction
from hub.net import without_credentials
from hub.store import idempotency, outbox, pagination
from hub.store.db import Pool

# Deliveries with work left (an index lookup per status, unlike "not final").
OPEN = [st for st in c.DELIVERY_STATUSES if st not in c.FINAL_DELIVERY_STATUSES]
# Up to this many deliveries go in with their session's INSERT (one round trip, with
# others' in `create_many`); more are streamed with COPY, which is faster per row but
# costs a few round trips more.
COPY_ABOVE = 1000
_COLUMN_TYPES = (
    ("id", "uuid"), ("app_id", "uuid"), ("transport_id", "uuid"), ("transport_type", "text"),
    ("xref", "text"), ("status", "text"), ("trigger", "text"), ("instruction", "jsonb"),
    ("scheduled_at", "timestamptz"), ("retries", "int"), ("retry_intervals_s", "float8[]"),
    ("webhook_url", "text"), ("audience_count", "int"), ("duplicates_removed", "int"),
    ("created_at", "timestamptz"))
_COLUMN_NAMES = [name for name, _ in _COLUMN_TYPES]
_COLUMNS = ", ".join(_COLUMN_NAMES)
_VALUES = ", ".join(f"${i}::{type_}" for i, (_, type_) in enumerate(_COLUMN_TYPES, 1))
_INSERT_SESSION = f"INSERT INTO sessions ({_COLUMNS}) VALUES ({_VALUES})"
_DELIVERIES = (
    " d AS (INSERT INTO deliveries (session_id, address, status, next_attempt_at, role)"
    "  SELECT s.id, u.address, $16, $17::timestamptz, u.role"
    "  FROM s, unnest($18::text[], $19::text[]) AS u(address, role))")
_INSERT_WITH_DELIVERIES = (
    f"WITH s AS ({_INSERT_SESSION} RETURNING id),{_DELIVERIES} SELECT 1")
# With an idempotency key: the session (and its deliveries) only if the key's answer was
# stored (`idempotency.guarded`, whose parameters follow the session's).
_GUARDED_SESSION = (
    f"{idempotency.guarded(16)}, s AS (INSERT INTO sessions ({_COLUMNS})"
    f" SELECT {_VALUES} FROM k RETURNING id){idempotency.OUTCOME}")
_GUARDED_WITH_DELIVERIES = (
    f"{idempotency.guarded(20)}, s AS (INSERT INTO sessions ({_COLUMNS})"
    f" SELECT {_VALUES} FROM k RETURNING id),{_DELIVERIES}{idempotency.OUTCOME}")
_CREATED = idempotency.Outcome(held=True, stored=True, previous=None)
# Many sessions from arrays, one per column ($1 to $15: jsonb and float8[] values as their
# text, since arrays of arrays must be rectangular), then their deliveries ($16 to $20),
# then the keys of those that have one (`idempotency.guarded_many`, $21 to $28).
_ARRAY_TYPES = {"jsonb": "text", "float8[]": "text"}
_INSERT_MANY = (
    f"{idempotency.guarded_many(21)}, s AS (INSERT INTO sessions ({_COLUMNS})"
    " SELECT " + ", ".join(f"{name}::{type_}" for name, type_ in _COLUMN_TYPES) +
    " FROM unnest(" + ", ".join(f"${i}::{_ARRAY_TYPES.get(type_, type_)}[]"
                               for i, (_, type_) in enumerate(_COLUMN_TYPES, 1)) +
    f") AS t({_COLUMNS}) WHERE {idempotency.kept('t.id')}),"
    " d AS (INSERT INTO deliveries (session_id, address, status, next_attempt_at, role)"
    "  SELECT u.sid, u.address, $16, u.due, u.role"
    "  FROM unnest($17::uuid[], $18::text[], $19::text[], $20::timestamptz[])"
    f"  AS u(sid, address, role, due) WHERE {idempotency.kept('u.sid')})"
    f"{idempotency.OUTCOMES}")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def view(row: Any, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """A session as the API shows it."""
    out = {
        "id": str(row["id"]),
        "sessionId": str(row["id"]),
        "status": row["status"],
        "transport": row["transport_type"],
        "transportId": str(row["transport_id"]),
        "trigger": row["trigger"],
        "xref": row["xref"],
        "audienceCount": row["audience_count"],
        "duplicatesRemoved": row["duplicates_removed"],
        "retries": row["retries"],
        "retryIntervalMinutes": ",".join(f"{s / 60:g}" for s in row["retry_intervals_s"]),
        "webhookUrl": without_credentials(row["webhook_url"]),
        "run": row["run"],
        "createdAt": _iso(row["created_at"]),
        "scheduledTimestamp": _iso(row["scheduled_at"]),
        "startedAt": _iso(row["started_at"]),
        "endedAt": _iso(row["ended_at"]),
    }
    if counts is not None:
        out["counts"] = counts
    return out


@dataclass(frozen=True)
class NewSession:
    """A session about to be stored: `row` is it as stored (what `view` and the hand-off to
    the workers read), so that its answer can be stored in the same statement."""

    row: dict[str, Any]
    addresses: list[str]  # its deliveries: the audience, then the transport's copies
    roles: list[str]
    due: datetime | None

    @property
    def small(self) -> bool:
        return len(self.addresses) <= COPY_ABOVE

    def args(self) -> tuple[Any, ...]:
        """The session's INSERT parameters, $1 to $15."""
        return tuple(self.row[name] for name in _COLUMN_NAMES)


def new(app_id: uuid.UUID, transport: dict[str, Any], vi: ValidInstruction) -> NewSession:
    """The session of a valid instruction and one delivery per unique address.

    An email's `cc`/`bcc` addresses become deliveries of the session too (role `cc`/`bcc`,
    one copy each per session); an address also in the audience stays an audience
    delivery only.
    """
    ins, opts = vi.instruction, vi.instruction.options
    now = datetime.now(UTC)
    # in UTC, as PostgreSQL gives it back (the answer is made from this row)
    at = opts.scheduled_timestamp.astimezone(UTC) if opts.scheduled_timestamp else None
    status, due = {
        "immediate": (c.S_QUEUED, now),
        "scheduled": (c.S_SCHEDULED, at),
        "manual": (c.S_AWAITING, None),
    }[opts.trigger]
    row = dict(zip(_COLUMN_NAMES, (
        uuid.uuid4(), app_id, transport["id"], ins.transport.type, ins.xref, status,
        opts.trigger, ins.transport.model_dump(by_alias=True, exclude_none=True),
        at, opts.retries, vi.retry_intervals_s, opts.webhook_url,
        len(vi.addresses), vi.duplicates_removed, now), strict=True))
    row.update(run=1, started_at=None, ended_at=None)
    return NewSession(row, [*vi.addresses, *(a for a, _ in vi.copies)],
                      ["to"] * len(vi.addresses) + [role for _, role in vi.copies], due)


async def create(conn: asyncpg.Connection, session: NewSession,
                 key: tuple[idempotency.Key, Any] | None = None) -> idempotency.Outcome:
    """Store the session and its deliveries atomically: with `key` (the key and the answer
    to keep with it), only if that answer is stored (`idempotency.guarded`). A small
    audience goes in with the session in one statement; a large one by COPY in the same
    transaction (the caller's, when it has one)."""
    args = session.args()
    guard: tuple[Any, ...] = ()
    if key is not None:
        guard = key[0].params(201, key[1])
    if session.small:
        if key is None:
            await conn.execute(_INSERT_WITH_DELIVERIES, *args, c.D_PENDING, session.due,
                               session.addresses, session.roles)
            return _CREATED
        row = await conn.fetchrow(_GUARDED_WITH_DELIVERIES, *args, c.D_PENDING, session.due,
                                  session.addresses, session.roles, *guard)
        return idempotency.Outcome.of(row)
    outer = conn.is_in_transaction()  # the caller's transaction: no savepoint needed
    async with contextlib.nullcontext() if outer else conn.transaction():
        if key is None:
            await conn.execute(_INSERT_SESSION, *args)
            done = _CREATED
        else:
            done = idempotency.Outcome.of(await conn.fetchrow(_GUARDED_SESSION, *args, *guard))
        if done.stored:
            await conn.copy_records_to_table(
                "deliveries",
                records=((args[0], a, c.D_PENDING, session.due, role)
                         for a, role in zip(session.addresses, session.roles, strict=True)),
                columns=["session_id", "address", "status", "next_attempt_at", "role"],
            )
    return done


Keyed = tuple[idempotency.Key, Any]  # a key and the answer to keep with it


def _keyed(batch: list[tuple[NewSession, Keyed | None]]) -> list[tuple[NewSession, Keyed]]:
    return [(s, pair) for s, pair in batch if pair is not None]


async def create_many(conn: asyncpg.Connection,
                      batch: list[tuple[NewSession, Keyed | None]]) -> list[idempotency.Outcome]:
    """Store small sessions, each with its deliveries and (with a key) only if its key's
    answer is stored, all in one statement (one round trip and one commit for the lot);
    if it fails, none. At most one session per key (the lock is the transaction's: a
    second would take it again and conflict with the first's answer). The outcome of
    each, in order."""
    assert len({(k.app_id, k.key) for _, (k, _) in _keyed(batch)}) == len(_keyed(batch))
    rows = [s.row for s, _ in batch]
    columns = [[row[name] for row in rows] for name in _COLUMN_NAMES]
    at = _COLUMN_NAMES.index
    columns[at("instruction")] = [json.dumps(v) for v in columns[at("instruction")]]
    columns[at("retry_intervals_s")] = [
        "{" + ",".join(repr(float(x)) for x in v) + "}" for v in columns[at("retry_intervals_s")]]
    ids, addresses, roles, due = [], [], [], []
    for s, _ in batch:
        ids += [s.row["id"]] * len(s.addresses)
        addresses += s.addresses
        roles += s.roles
        due += [s.due] * len(s.addresses)
    keys: list[list[Any]] = [[], [], [], [], [], [], []]
    ttl = 0  # the same for every key (the process's setting)
    for s, pair in batch:
        if pair is not None:
            key, answer = pair
            for column, value in zip(keys, (s.row["id"], key.lock_id, key.app_id, key.key,
                                            key.request_hash, 201, json.dumps(answer)),
                                     strict=True):
                column.append(value)
            ttl = key.ttl_h
    found = await conn.fetch(_INSERT_MANY, *columns, c.D_PENDING, ids, addresses, roles, due,
                             *keys, ttl)
    by_id = {row["sid"]: idempotency.Outcome.of(row) for row in found}
    return [_CREATED if pair is None else by_id[s.row["id"]] for s, pair in batch]


async def get(pool: Pool | asyncpg.Connection, app_id: uuid.UUID | None,
              session_id: uuid.UUID) -> asyncpg.Record | None:
    if app_id is None:
        return await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
    return await pool.fetchrow(
        "SELECT * FROM sessions WHERE id = $1 AND app_id = $2", session_id, app_id
    )


async def counts(pool: Pool | asyncpg.Connection, session_id: uuid.UUID) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM deliveries WHERE session_id = $1 GROUP BY status",
        session_id,
    )
    return {r["status"]: r["n"] for r in rows}


async def list_(
    pool: Pool, app_id: uuid.UUID, *, limit: int, cursor: str | None, status: str | None,
    transport: str | None, xref: str | None, created_from: datetime | None,
    created_to: datetime | None,
) -> tuple[list[asyncpg.Record], str | None]:
    where, args = ["app_id = $1"], list[Any]([app_id])
    for column, value in (("status", status), ("transport_type", transport), ("xref", xref)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if created_from is not None:
        args.append(created_from)
        where.append(f"created_at >= ${len(args)}")
    if created_to is not None:
        args.append(created_to)
        where.append(f"created_at < ${len(args)}")
    if cursor:
        at, last_id = pagination.decode(cursor, 2)
        args += [datetime.fromisoformat(at), uuid.UUID(last_id)]
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT * FROM sessions WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", *args,
    )
    return pagination.page_of(list(rows), limit,
                              lambda r: [r["created_at"].isoformat(), str(r["id"])])


async def transition(
    pool: Pool, app_id: uuid.UUID, session_id: uuid.UUID, action: str, *,
    include_failed: bool = False, report_base: str = "",
) -> asyncpg.Record | None:
    """Apply trigger/cancel/pause/resume; None when the session is not in a state that allows it."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM sessions WHERE id = $1 AND app_id = $2 FOR UPDATE", session_id, app_id
        )
        if row is None:
            return None
        handler = _ACTIONS[action]
        return await handler(conn, row, include_failed, report_base)


async def _trigger(conn: asyncpg.Connection, row: Any, include_failed: bool, report_base: str) -> Any:
    if include_failed:
        if row["ended_at"] is None:
            return None
        ids = await conn.fetch(
            "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = now(),"
            " error = NULL WHERE session_id = $1 AND status = 'failed' RETURNING id", row["id"]
        )
        if not ids:
            return None
        # Audio that could not be prepared is prepared again for the new run.
        return await conn.fetchrow(
            "UPDATE sessions SET status = 'queued', run = run + 1, ended_at = NULL,"
            " media = CASE WHEN media ? 'error' THEN NULL ELSE media END,"
            " prepare_failures = 0 WHERE id = $1 RETURNING *", row["id"]
        )
    if row["status"] != c.S_AWAITING:
        return None
    await conn.execute(
        "UPDATE deliveries SET next_attempt_at = now() WHERE session_id = $1 AND status = 'pending'",
        row["id"],
    )
    return await conn.fetchrow(
        "UPDATE sessions SET status = 'queued' WHERE id = $1 RETURNING *", row["id"]
    )


async def _cancel(conn: asyncpg.Connection, row: Any, include_failed: bool, report_base: str) -> Any:
    if row["status"] in (c.S_COMPLETED, c.S_CANCELLED):
        return None
    ids = await conn.fetch(
        "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL,"
        " error = coalesce(error, 'session cancelled')"
        " WHERE session_id = $1 AND status IN ('pending', 'retry_scheduled') RETURNING id",
        row["id"],
    )
    await outbox.add_delivery_events(conn, [r["id"] for r in ids])
    await conn.execute("UPDATE sessions SET status = 'cancelled' WHERE id = $1", row["id"])
    await finish_if_done(conn, row["id"], report_base=report_base)
    return await conn.fetchrow("SELECT * FROM sessions WHERE id = $1", row["id"])


async def _pause(conn: asyncpg.Connection, row: Any, include_failed: bool, report_base: str) -> Any:
    if row["status"] not in (c.S_SCHEDULED, c.S_QUEUED, c.S_RUNNING):
        return None
    return await conn.fetchrow(
        "UPDATE sessions SET status = 'paused' WHERE id = $1 RETURNING *", row["id"]
    )


async def _resume(conn: asyncpg.Connection, row: Any, include_failed: bool, report_base: str) -> Any:
    if row["status"] != c.S_PAUSED:
        return None
    return await conn.fetchrow(
        "UPDATE sessions SET status = CASE"
        " WHEN scheduled_at > now() AND started_at IS NULL THEN 'scheduled'"
        " WHEN started_at IS NULL THEN 'queued' ELSE 'running' END"
        " WHERE id = $1 RETURNING *", row["id"]
    )


_ACTIONS = {"trigger": _trigger, "cancel": _cancel, "pause": _pause, "resume": _resume}


async def finish_if_done(
    conn: asyncpg.Connection, session_id: uuid.UUID, *, report_base: str
) -> bool:
    """Close the session when no delivery has work left; emits `session.completed` once,
    in the same transaction as the status change."""
    async with conn.transaction():
        # Completion checks of one session take turns on its row: when two transactions
        # settle its last deliveries at once, the second to check sees the first's commit.
        # The row, like a cancel's `FOR UPDATE`, comes before any other lock of the check's
        # (an advisory lock taken first, then waiting for the row a cancel held while the
        # cancel waited for that lock, was a deadlock).
        await conn.execute("SELECT FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id)
        return await _finish(conn, session_id, report_base)


async def _finish(conn: asyncpg.Connection, session_id: uuid.UUID, report_base: str) -> bool:
    row = await conn.fetchrow(
        "UPDATE sessions SET ended_at = now(),"
        " status = CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'completed' END"
        " WHERE id = $1 AND ended_at IS NULL AND status IN ('queued', 'running', 'cancelled')"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE session_id = $1"
        "   AND status = ANY($2::text[])) RETURNING *",
        session_id, OPEN,
    )
    if row is None:
        return False
    got = await counts(conn, session_id)
    report_url = f"{report_base}/v1/sessions/{session_id}/report"
    await outbox.add_session_event(conn, row, got, report_url)
    return True


async def counts_for(pool: Pool | asyncpg.Connection,
                     session_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """`counts` of several sessions in one query (a page of a listing)."""
    found: dict[uuid.UUID, dict[str, int]] = {sid: {} for sid in session_ids}
    rows = await pool.fetch(
        "SELECT session_id, status, count(*) AS n FROM deliveries"
        " WHERE session_id = ANY($1::uuid[]) GROUP BY 1, 2", session_ids)
    for r in rows:
        found[r["session_id"]][r["status"]] = r["n"]
    return found
