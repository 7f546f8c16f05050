"""Apps, their API keys and their voice trunk grants.

Creating an app and granting trunks needs the admin key. An app's own key may mint keys up
to HUB_MAX_KEYS_PER_APP active ones, list and revoke its keys and read its grants; another
app's key gets 404 (the auth middleware checks that the path names the caller's app)."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hub.api import state as st
from hub.errors import Conflict, Forbidden, NotFound
from hub.store import apps
from hub.store import grants as grant_store

routes = web.RouteTableDef()


class AppIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class TrunkGrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trunk: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")


def is_admin(request: web.Request) -> bool:
    admin = st.settings(request).admin_key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (bool(admin) and scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8", "backslashreplace"), admin.encode()))


def _require_admin(request: web.Request, what: str) -> None:
    if not is_admin(request):
        raise Forbidden(f"{what} needs the admin key (HUB_ADMIN_KEY)",
                        error_id="admin-key-required")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _no_app(app_id: object) -> NotFound:
    return NotFound(f"no app {app_id}", error_id="app-not-found")


@routes.post("/v1/apps")
async def create(request: web.Request) -> web.Response:
    body = st.parse_model(AppIn, await st.read_json(request))
    new = await apps.create_app(st.pool(request), body.name)
    return web.json_response(
        {"id": str(new.app_id), "appId": str(new.app_id), "name": new.name,
         "apiKey": new.api_key, "webhookSecret": new.webhook_secret},
        status=201,
    )


# --- API keys (issue 8 part 6, issue 10 part 7) ---------------------------------------

def _key(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "prefix": row["prefix"], "createdAt": _iso(row["created_at"]),
            "revokedAt": _iso(row["revoked_at"])}


@routes.post("/v1/apps/{id}/keys")
async def create_key(request: web.Request) -> web.Response:
    app_id = st.path_uuid(request, "id", "app")
    cap = None if is_admin(request) else st.settings(request).max_keys_per_app
    key = await apps.create_key(st.pool(request), app_id, cap)
    if key == "missing":
        raise _no_app(app_id)
    if key == "limit":
        raise Conflict(f"this app has {cap} active API keys, the most an app may mint"
                       " (HUB_MAX_KEYS_PER_APP); revoke one first (DELETE"
                       f" /v1/apps/{app_id}/keys/{{keyId}}) or ask the operator",
                       error_id="key-limit-reached", details={"maxActiveKeys": cap})
    assert isinstance(key, apps.NewKey)
    return web.json_response(
        {"id": str(key.key_id), "appId": str(app_id), "apiKey": key.api_key,
         "prefix": key.prefix, "createdAt": _iso(key.created_at)}, status=201)


@routes.get("/v1/apps/{id}/keys")
async def list_keys(request: web.Request) -> web.Response:
    app_id = st.path_uuid(request, "id", "app")
    rows = await apps.list_keys(st.pool(request), app_id)
    if rows is None:
        raise _no_app(app_id)
    return st.page([_key(r) for r in rows], None)


@routes.delete("/v1/apps/{id}/keys/{keyId}")
async def revoke_key(request: web.Request) -> web.Response:
    app_id = st.path_uuid(request, "id", "app")
    key_id = st.path_uuid(request, "keyId", "key")
    if not await apps.revoke_key(st.pool(request), app_id, key_id):
        raise NotFound(f"no key {key_id} in app {app_id}", error_id="key-not-found")
    st.forget_lookups(request, app_id)  # the admin key has no app of its own
    return web.Response(status=204)


# --- voice trunk grants (issue 8 part 1, DESIGN §3) -----------------------------------

def _grant(row: dict[str, Any]) -> dict[str, Any]:
    return {"appId": str(row["app_id"]), "trunk": row["trunk"],
            "createdAt": _iso(row["created_at"])}


@routes.post("/v1/apps/{id}/trunks")
async def grant_trunk(request: web.Request) -> web.Response:
    _require_admin(request, "granting a trunk")
    app_id = st.path_uuid(request, "id", "app")
    body = st.parse_model(TrunkGrantIn, await st.read_json(request))
    row = await grant_store.grant(st.pool(request), app_id, body.trunk)
    if row is None:
        raise _no_app(app_id)
    return web.json_response(_grant(row), status=201)


@routes.get("/v1/apps/{id}/trunks")
async def list_trunks(request: web.Request) -> web.Response:
    app_id = st.path_uuid(request, "id", "app")
    rows = await grant_store.list_(st.pool(request), app_id)
    if rows is None:
        raise _no_app(app_id)
    return st.page([_grant(r) for r in rows], None)


@routes.delete("/v1/apps/{id}/trunks/{trunk}")
async def revoke_trunk(request: web.Request) -> web.Response:
    _require_admin(request, "revoking a trunk grant")
    app_id = st.path_uuid(request, "id", "app")
    trunk = request.match_info["trunk"]
    force = st.query_choice(request, "force", ("true", "false")) == "true"
    result, naming = await grant_store.revoke(st.pool(request), app_id, trunk, force=force)
    if result == "missing":
        raise NotFound(f"trunk {trunk!r} is not granted to app {app_id}",
                       error_id="grant-not-found")
    if result == "in-use":
        raise Conflict(f"{len(naming)} voice transport(s) of this app name trunk {trunk!r};"
                       " change or delete them first, or revoke with ?force=true (they then"
                       " cannot be changed until they name a granted trunk)",
                       error_id="trunk-in-use",
                       details=[{"transportId": str(t["id"]), "name": t["name"]} for t in naming])
    return web.Response(status=204)
