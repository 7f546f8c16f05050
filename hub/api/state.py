"""Typed application state and request helpers shared by the route modules."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis as AsyncRedis

from hub.api import body
from hub.batching import GroupCommit
from hub.config import Settings
from hub.errors import BadRequest, NotFound, Unprocessable, UnsupportedMediaType, detail
from hub.jobs.queueing import Kick, Kicker
from hub.store import sessions
from hub.store.lookups import LookupCache

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
KICKER = web.AppKey("kicker", Kicker)
LOOKUPS = web.AppKey("lookups", LookupCache)
APP_ID = web.RequestKey("app_id", uuid.UUID)
M = TypeVar("M", bound=BaseModel)
MAX_LIMIT = 1000
# Timestamps in query filters; beyond these, UTC conversions overflow (year 1 and 9999).
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def pool(request: web.Request) -> asyncpg.Pool:
    return request.app[POOL]


def lookups(request: web.Request) -> LookupCache:
    return request.app[LOOKUPS]


def forget_lookups(request: web.Request, app: uuid.UUID | None = None) -> None:
    """After an app's keys or transports changed (the caller's app by default): this
    process's next request sees it (other processes hear of it through the store's NOTIFY)."""
    request.app[LOOKUPS].forget(app or app_id(request))


def app_id(request: web.Request) -> uuid.UUID:
    found: uuid.UUID = request[APP_ID]
    return found


class Kicks:
    """The API's hand-off of sessions to the workers. Sessions to start now are enqueued
    in batches of three Redis round trips on the event loop (asyncio client), whatever the
    request rate (a thread and five round trips per request capped submissions at
    ~300/s; a thread per batch still made each request wait ~20 ms for the GIL)."""

    def __init__(self, kicker: Kicker, aredis: AsyncRedis) -> None:
        self.kicker, self.aredis = kicker, aredis
        self.batches: GroupCommit[Kick, bool] = GroupCommit(self._enqueue, wait_s=0.0)

    async def _enqueue(self, batch: list[Kick]) -> list[bool]:
        return [await self.kicker.sessions_async(batch, self.aredis)] * len(batch)

    async def session(self, session: Any, *, parallel: int = 1,
                      at: datetime | None = None) -> None:
        if at is None:
            await self.batches.submit((str(session["id"]), session["transport_type"], parallel))
        else:
            await asyncio.to_thread(self.kicker.session, str(session["id"]),
                                    session["transport_type"], at=at)


KICKS = web.AppKey("kicks", Kicks)


async def kick(request: web.Request, session: Any, *, parallel: int = 1,
               at: datetime | None = None) -> None:
    await request.app[KICKS].session(session, parallel=parallel, at=at)


def require_json(request: web.Request) -> None:
    """A JSON body must say so: `application/json` (or a `+json` type), charset utf-8 if any."""
    ctype = request.content_type
    charset = (request.charset or "utf-8").lower()
    if (ctype == "application/json" or ctype.endswith("+json")) and charset in ("utf-8", "utf8"):
        return
    raise UnsupportedMediaType(
        "the body must be JSON sent with 'Content-Type: application/json'",
        details=[detail(["header", "Content-Type"], "expected application/json")])


async def read_json(request: web.Request, error_id: str = "invalid-body") -> Any:
    """The JSON body, strictly parsed (hub.api.body); strings it holds are storable."""
    require_json(request)
    return body.loads(await request.read(), error_id)


def parse_model(model: type[M], body: Any, error_id: str = "invalid-body") -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise Unprocessable(
            "the request body is invalid", error_id=error_id,
            details=[detail(list(e["loc"]), e["msg"]) for e in exc.errors(include_url=False)],
        ) from None


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"no {what} with id {request.match_info[name]!r}",
                       error_id=f"{what}-not-found") from None


def query_limit(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}",
                         error_id="bad-parameter", details=[detail(["query", "limit"], "invalid")])
    return int(raw)


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}", error_id="bad-parameter",
                         details=[detail(["query", name], "invalid")])
    return value


def query_time(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed.replace(tzinfo=parsed.tzinfo or UTC).astimezone(UTC)
        if not MIN_TIME <= parsed <= MAX_TIME:
            raise ValueError("out of range")
    except (ValueError, OverflowError):
        raise BadRequest(f"{name} must be an ISO-8601 timestamp from {MIN_TIME.date()} to"
                         f" {MAX_TIME.date()}", error_id="bad-parameter",
                         details=[detail(["query", name], "invalid")]) from None
    return parsed


def page(items: list[Any], next_cursor: str | None) -> web.Response:
    return web.json_response({"items": items, "nextCursor": next_cursor})


async def own_session(request: web.Request) -> Any:
    """The session named by the path's `id`, if it is the calling app's (else 404: an app
    never learns that another app's session exists)."""
    session_id = path_uuid(request, "id", "session")
    row = await sessions.get(pool(request), app_id(request), session_id)
    if row is None:
        raise NotFound(f"no session {session_id} in this app", error_id="session-not-found")
    return row
