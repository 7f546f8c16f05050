"""One middleware renders every error as `{error_id, message, details}` (and refuses query
and path values that cannot be stored before any handler runs); one authenticates."""

from __future__ import annotations

import hmac
import logging
import uuid

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from hub.api import state as st
from hub.api.body import printable, text_problem
from hub.api.callbacks import PREFIX as CALLBACKS
from hub.api.ops import PUBLIC_PATHS
from hub.errors import (
    BadRequest,
    Forbidden,
    HubError,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    detail,
)
from hub.store import apps

log = logging.getLogger(__name__)
# A restarting PostgreSQL or a failover: 503 with Retry-After, not an internal error. Down,
# it refuses connections; going down or starting, it says so (operator intervention); a
# connection it dropped is an asyncpg interface error. Not any ConnectionError: an HTTP
# client that hangs up mid-body raises ConnectionResetError too, and is not the database.
DATABASE_AWAY = (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
                 asyncpg.InterfaceError, ConnectionRefusedError)


def _json_error(err: HubError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _check_parameters(request)
        return await handler(request)
    except HubError as err:
        return _json_error(err)
    except web.HTTPRequestEntityTooLarge:
        return _json_error(TooLarge(
            f"the body is larger than {request.app[st.SETTINGS].body_max_bytes} bytes"
            " (HUB_BODY_MAX_BYTES)",
            error_id="body-too-large"))
    except web.HTTPException as exc:
        if exc.status >= 400:
            error_id = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "http-error")
            http_err = HubError(exc.reason, error_id=error_id)
            http_err.status = exc.status
            return _json_error(http_err)
        raise
    except DATABASE_AWAY as exc:
        log.warning("%s %s: the database is unavailable: %s", request.method, request.path, exc)
        return _json_error(Unavailable("the database is unavailable right now; retry shortly",
                                       error_id="dependency-unavailable",
                                       headers={"Retry-After": "2"}))
    except ConnectionResetError:
        if request.transport is None or request.transport.is_closing():
            # aiohttp's "Connection lost": the client hung up before its request was read
            log.info("%s %s: the client went away", request.method, request.path)
            return web.Response(status=499)
        return _internal_error(request)
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """A 500 with a reference to the traceback logged (called while handling the error)."""
    ref = uuid.uuid4().hex[:12]
    log.exception("unhandled error %s on %s %s", ref, request.method, request.path)
    return _json_error(HubError(f"internal error (reference {ref}); the request may be retried"))


def _check_parameters(request: web.Request) -> None:
    """Query parameters and path segments with a NUL or a lone surrogate (from bytes that
    are not UTF-8) are refused before any handler sees them: PostgreSQL cannot store them."""
    problems = []
    for where, items in (("query", request.query.items()), ("path", request.match_info.items())):
        for name, value in items:
            why = text_problem(name) or text_problem(value)
            if why:
                problems.append(detail([where, printable(name)], why))
    if problems:
        raise BadRequest(f"a {problems[0]['loc'][0]} parameter {problems[0]['msg']}",
                         error_id="bad-parameter", details=problems)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <api key>'", error_id="missing-api-key",
                           details=[detail(["header", "Authorization"], "missing")])
    token = token.strip()
    if not (token.isascii() and token.isprintable()):  # keys are ASCII; so is every header we read
        raise Unauthorized("the API key is not valid", error_id="invalid-api-key",
                           details=[detail(["header", "Authorization"], "not an API key")])
    return token


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if (request.path in PUBLIC_PATHS or request.path.startswith(CALLBACKS)
            or not request.path.startswith("/v1/")):
        return await handler(request)
    token = _bearer(request)
    admin = st.settings(request).admin_key
    is_admin = bool(admin) and hmac.compare_digest(token.encode(), admin.encode())
    if request.path.startswith("/v1/apps"):
        if is_admin:
            return await handler(request)
        if request.path == "/v1/apps":
            raise Forbidden("creating apps needs the admin key (HUB_ADMIN_KEY)",
                            error_id="admin-key-required")
    app_id = await apps.app_for_key(st.pool(request), token, st.lookups(request))
    if app_id is None:
        raise Unauthorized("the API key is not valid", error_id="invalid-api-key")
    if request.path.startswith("/v1/apps/") and request.match_info.get("id") != str(app_id):
        raise NotFound("no such app", error_id="app-not-found")
    request[st.APP_ID] = app_id
    return await handler(request)
