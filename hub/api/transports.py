"""Transports: external services registered per app. Secrets are write-only.

Every host and URL of a config (a spec's `url_fields` and `host_fields`) passes the same
guard as caller-supplied URLs (DESIGN §3) before it is stored; connections check again."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.api import state as st
from hub.errors import Conflict, NotFound, Unprocessable, detail
from hub.instruction import TransportType
from hub.net import Guard, check_host_name, check_public_url
from hub.store import transports as store
from hub.transports.registry import sending_spec
from hub.transports.voice import trunk_problems

routes = web.RouteTableDef()


class TransportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    type: TransportType
    provider: str | None = None
    config: dict[str, Any]
    default: bool | None = None


class TransportPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    config: dict[str, Any] | None = None
    default: bool | None = None


def split_config(type_: str, config: dict[str, Any], guard: Guard
                 ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Validate a transport config; return (provider, public part, secret part)."""
    spec = sending_spec(type_)
    try:
        model = spec.config_model.model_validate(config)
    except ValidationError as exc:
        raise _invalid(type_, [detail(["config", *e["loc"]], e["msg"])
                               for e in exc.errors(include_url=False)]) from None
    public = model.model_dump(by_alias=True, exclude_none=True)
    problems = destination_problems(spec, public, guard)
    if problems:
        raise _invalid(type_, problems)
    secrets = {k: public.pop(k) for k in spec.secret_fields if k in public}
    return spec.provider, public, secrets


def destination_problems(spec: object, config: dict[str, Any], guard: Guard
                         ) -> list[dict[str, Any]]:
    """The config's URLs and hosts the guard refuses, each with its location."""
    problems = []
    for name in getattr(spec, "url_fields", ()):
        if config.get(name) is not None:
            why = check_public_url(str(config[name]), guard, credentials=False)
            if why:
                problems.append(detail(["config", name], why))
    for name in getattr(spec, "host_fields", ()):
        if config.get(name) is not None:
            why = check_host_name(str(config[name]), guard)
            if why:
                problems.append(detail(["config", name], why))
    return problems


def _invalid(type_: str, problems: list[dict[str, Any]]) -> Unprocessable:
    return Unprocessable(f"the {type_} transport config is invalid",
                         error_id="invalid-transport-config", details=problems)


async def check_voice_trunk(request: web.Request, type_: str, public: dict[str, Any]) -> None:
    """A voice transport may name only a trunk granted to its app (or open to all): 422."""
    if type_ != "voice":
        return
    problems = await trunk_problems(st.pool(request), st.settings(request), st.app_id(request),
                                    public)
    if problems:
        raise Unprocessable("the voice transport config is invalid",
                            error_id="invalid-transport-config", details=problems)


@routes.post("/v1/transports")
async def create(request: web.Request) -> web.Response:
    body = st.parse_model(TransportIn, await st.read_json(request))
    provider, public, secrets = split_config(body.type, body.config,
                                             Guard.of(st.settings(request)))
    await check_voice_trunk(request, body.type, public)
    if body.provider and body.provider != provider:
        raise Unprocessable(f"provider {body.provider!r} is not available for {body.type}",
                            error_id="invalid-transport-config",
                            details=[detail(["provider"], f"supported: {provider}")])
    row = await store.create(st.pool(request), st.app_id(request), name=body.name,
                             type_=body.type, provider=provider, config=public, secrets=secrets,
                             default=body.default)
    st.forget_lookups(request)
    if row is None:
        raise Conflict(f"a transport named {body.name!r} already exists",
                       error_id="transport-name-taken")
    return web.json_response(row, status=201)


@routes.get("/v1/transports")
async def list_(request: web.Request) -> web.Response:
    return st.page(await store.list_(st.pool(request), st.app_id(request)), None)


async def _own(request: web.Request) -> dict[str, Any]:
    tid = st.path_uuid(request, "id", "transport")
    row = await store.get(st.pool(request), st.app_id(request), tid)
    if row is None:
        raise NotFound(f"no transport {tid} in this app", error_id="transport-not-found")
    return row


@routes.get("/v1/transports/{id}")
async def get(request: web.Request) -> web.Response:
    return web.json_response(await _own(request))


@routes.patch("/v1/transports/{id}")
async def patch(request: web.Request) -> web.Response:
    current = await _own(request)
    body = st.parse_model(TransportPatch, await st.read_json(request))
    public = secrets = None
    if body.config is not None:
        full = await store.get_full(st.pool(request), current["id"])
        assert full is not None
        merged = {**full["full_config"], **body.config}
        _, public, secrets = split_config(current["type"], merged,
                                          Guard.of(st.settings(request)))
        await check_voice_trunk(request, current["type"], public)
    try:
        row = await store.update(st.pool(request), st.app_id(request), current["id"],
                                 name=body.name, config=public, secrets=secrets,
                                 default=body.default)
        st.forget_lookups(request)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a transport named {body.name!r} already exists",
                       error_id="transport-name-taken",
                       details=[detail(["name"], "already taken")]) from None
    if row is None:
        raise NotFound(f"no transport {current['id']} in this app", error_id="transport-not-found")
    return web.json_response(row)


@routes.delete("/v1/transports/{id}")
async def delete(request: web.Request) -> web.Response:
    tid = st.path_uuid(request, "id", "transport")
    result = await store.delete(st.pool(request), st.app_id(request), tid)
    st.forget_lookups(request)
    if result == "missing":
        raise NotFound(f"no transport {tid} in this app", error_id="transport-not-found")
    if result == "in-use":
        raise Conflict("sessions still use this transport; it cannot be deleted",
                       error_id="transport-in-use")
    return web.Response(status=204)
