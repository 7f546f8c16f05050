"""Sessions: submit an instruction, read it back, and steer it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError

from hub import constants as c
from hub import reports
from hub.api import body, storing
from hub.api import state as st
from hub.constants import MAX_PARALLEL_JOBS_PER_SESSION
from hub.errors import BadRequest, Conflict, HubError, NotFound, Unprocessable, detail
from hub.instruction import parse_instruction
from hub.store import deliveries, idempotency, sessions
from hub.store import transports as transports_store

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
MAX_IDEMPOTENCY_KEY = 255
# A body this large (an audience of about a thousand) with a key looks for an earlier
# answer before it is validated: validating costs more than the extra round trip.
READ_ANSWER_FIRST_ABOVE = 32 * 1024


def _request_hash(raw: bytes) -> bytes:
    try:
        canonical = json.dumps(body.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except HubError:  # refused below, with the same answer for the same bytes
        canonical = raw
    return hashlib.sha256(canonical).digest()


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii()
                                and key.isprintable()):
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII"
                         " characters", error_id="bad-idempotency-key",
                         details=[detail(["header", "Idempotency-Key"], "invalid")])
    return key


@routes.post("/v1/sessions")
async def create_session(request: web.Request) -> web.Response:
    """The session, its deliveries and (with an Idempotency-Key) the key's answer are one
    statement for all the small audiences arriving meanwhile (`hub.api.storing`); a larger
    one has a statement of its own (COPY in a transaction above `COPY_ABOVE`). A request
    holds one pooled connection at a time."""
    st.require_json(request)  # before a key can keep this answer
    raw_key = _idempotency_key(request)
    key = None if raw_key is None else idempotency.Key(
        st.app_id(request), raw_key, _request_hash(await request.read()),
        st.settings(request).idempotency_ttl_h)
    async with st.pool(request).acquire() as conn:
        if key is not None and len(await request.read()) > READ_ANSWER_FIRST_ABOVE:
            seen = await idempotency.previous(conn, key)  # a retry skips the validation
            if seen is not None:
                return _replay(seen, key)
        try:
            session = await _valid(request, conn)
        except HubError as exc:
            if key is None or exc.status >= 500:  # a refusal is the answer; an outage is not
                raise
            refused = await idempotency.answer(conn, key, exc.status, exc.body())
            if refused.stored:
                raise
            return await _not_stored(conn, key, refused)
        out = sessions.view(session.row)
        if out["scheduledTimestamp"] is None:
            del out["scheduledTimestamp"]
        keyed = None if key is None else (key, out)
        batched = storing.takes(session)
        if not batched:
            done = await sessions.create(conn, session, keyed)
    if batched:  # with those arriving meanwhile, its connection given back first
        done = await request.app[storing.BATCHES].store(session, keyed)
    if not done.stored:
        assert key is not None
        return await _not_stored(st.pool(request), key, done)
    await _kick_new(request, session.row)
    return web.json_response(out, status=201)


async def _not_stored(db: asyncpg.Connection | asyncpg.Pool, key: idempotency.Key,
                      done: idempotency.Outcome) -> web.Response:
    """The answer when this request's was not kept: the first stored with this key
    (replayed; 422 for another body), or 409 while another request holds the key."""
    # None found: committed just after the statement's snapshot, or not at all yet
    seen = done.previous or await idempotency.previous(db, key)
    if seen is None:
        raise Conflict("the first request with this Idempotency-Key is still running",
                       error_id="idempotency-in-progress", headers={"Retry-After": "1"})
    return _replay(seen, key)


def _replay(seen: idempotency.Answer, key: idempotency.Key) -> web.Response:
    if seen.request_hash != key.request_hash:
        raise Unprocessable("this Idempotency-Key was used with another request body",
                            error_id="idempotency-key-reused")
    return web.json_response(seen.body, status=seen.status,
                             headers={"Idempotency-Replay": "true"})


async def _valid(request: web.Request, conn: asyncpg.Connection) -> sessions.NewSession:
    """The session the request's instruction makes, validated (its transport looked up on
    `conn`: a request never holds two connections)."""
    settings = st.settings(request)
    doc = await st.read_json(request, "invalid-instruction")
    transport = await _transport_for(request, conn, doc)
    region = transport["config"].get("defaultRegion") if transport else None
    valid = parse_instruction(doc, settings, default_region=region)
    if transport is None:
        type_ = valid.instruction.transport.type
        raise Unprocessable(
            f"no {type_} transport is registered for this app; register one with "
            "POST /v1/transports", error_id="transport-not-configured",
            details=[detail(["transport", "type"], f"no {type_} transport registered")],
        )
    return sessions.new(st.app_id(request), transport, valid)


async def _kick_new(request: web.Request, row: Mapping[str, Any]) -> None:
    """Hand a just-created session to the workers. The session is committed: nothing here
    may turn its 201 into an error (a retry would submit it twice); if the hand-off fails,
    the reconciler does it."""
    try:
        if row["status"] == c.S_QUEUED:
            batches = math.ceil(row["audience_count"] / st.settings(request).batch_size)
            await st.kick(request, row, parallel=min(MAX_PARALLEL_JOBS_PER_SESSION, batches))
        elif row["status"] == c.S_SCHEDULED:
            await st.kick(request, row, at=row["scheduled_at"])
    except (RedisError, OSError, ValueError, OverflowError) as exc:
        log.warning("session %s stored; hand-off to workers failed (%s: %s), the reconciler"
                    " will start it", row["id"], type(exc).__name__, exc)


async def _transport_for(request: web.Request, conn: asyncpg.Connection,
                         body: Any) -> dict[str, Any] | None:
    part = body.get("transport") if isinstance(body, dict) else None
    if not isinstance(part, dict) or part.get("type") not in c.TRANSPORT_TYPES:
        return None
    extras = part.get("extras")
    name = extras.get("transport") if isinstance(extras, dict) else None
    name = name if isinstance(name, str) else None
    found = await transports_store.resolve(conn, st.app_id(request), part["type"], name,
                                           st.lookups(request))
    if found is None and name:
        raise Unprocessable(f"no {part['type']} transport named {name!r}",
                            error_id="transport-not-configured",
                            details=[detail(["transport", "extras", "transport"], "not registered")])
    return found


@routes.get("/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    rows, nxt = await sessions.list_(
        st.pool(request), st.app_id(request), limit=st.query_limit(request),
        cursor=request.query.get("cursor"),
        status=st.query_choice(request, "status", c.SESSION_STATUSES),
        transport=st.query_choice(request, "transport", c.TRANSPORT_TYPES),
        xref=request.query.get("xref"),
        created_from=st.query_time(request, "createdFrom"),
        created_to=st.query_time(request, "createdTo"),
    )
    return st.page([sessions.view(r) for r in rows], nxt)


@routes.get("/v1/sessions/{id}")
async def get_session(request: web.Request) -> web.Response:
    row = await st.own_session(request)
    return web.json_response(sessions.view(row, await sessions.counts(st.pool(request), row["id"])))


@routes.get("/v1/sessions/{id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    row = await st.own_session(request)
    items, nxt = await deliveries.list_(
        st.pool(request), row["id"], limit=st.query_limit(request),
        cursor=request.query.get("cursor"),
        status=st.query_choice(request, "status", c.DELIVERY_STATUSES),
        address=request.query.get("address"),
    )
    return st.page(items, nxt)


@routes.get("/v1/sessions/{id}/deliveries/{address}/attempts")
async def list_attempts(request: web.Request) -> web.Response:
    row = await st.own_session(request)
    address = request.match_info["address"]
    found = await deliveries.attempts(st.pool(request), row["id"], address)
    if found is None:
        raise NotFound(f"{address!r} is not in session {row['id']}", error_id="delivery-not-found")
    return st.page(found, None)


def _action(name: str, allowed_from: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        row = await st.own_session(request)
        include_failed = request.query.get("includeFailed", "false").lower() == "true"
        updated = await sessions.transition(
            st.pool(request), st.app_id(request), row["id"], name,
            include_failed=include_failed, report_base=st.settings(request).base_url,
        )
        if updated is None:
            raise Conflict(f"cannot {name} session {row['id']}: it is {row['status']}"
                           f" ({name} needs {allowed_from})", error_id=f"cannot-{name}",
                           details={"status": row["status"]})
        if updated["status"] in (c.S_QUEUED, c.S_RUNNING):
            jobs = min(MAX_PARALLEL_JOBS_PER_SESSION,
                       math.ceil(updated["audience_count"] / st.settings(request).batch_size))
            await st.kick(request, updated, parallel=jobs)
        elif updated["status"] == c.S_SCHEDULED:
            await st.kick(request, updated, at=updated["scheduled_at"])
        counts = await sessions.counts(st.pool(request), row["id"])
        return web.json_response(sessions.view(updated, counts), status=202)

    return handler


for _name, _from in (
    ("trigger", "awaiting_trigger, or a finished session with ?includeFailed=true"),
    ("cancel", "a session that has not ended"),
    ("pause", "scheduled, queued or running"),
    ("resume", "paused"),
):
    routes.post(f"/v1/sessions/{{id}}/{_name}")(_action(_name, _from))


@routes.get("/v1/sessions/{id}/report")
async def report(request: web.Request) -> web.StreamResponse:
    row = await st.own_session(request)
    fmt = st.query_choice(request, "format", ("json", "csv")) or "json"
    if fmt == "json":
        return web.json_response(await reports.build(st.pool(request), row))
    # CSV: every recipient's row, streamed in batches, then the summary.
    built = await reports.build(st.pool(request), row, rows_max=0)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="session-{row["id"]}.csv"'})
    await resp.prepare(request)
    await resp.write(reports.csv_rows([], header=True).encode())
    async for batch in reports.all_rows(st.pool(request), row["id"]):
        await resp.write(reports.csv_rows(batch).encode())
    await resp.write(("\n" + reports.csv_summary(built)).encode())
    await resp.write_eof()
    return resp
