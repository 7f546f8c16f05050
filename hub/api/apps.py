"""Apps and API keys. Creating an app needs the admin key; an app may mint its own keys."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hub.api import state as st
from hub.errors import NotFound
from hub.store import apps

routes = web.RouteTableDef()


class AppIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


@routes.post("/v1/apps")
async def create(request: web.Request) -> web.Response:
    body = st.parse_model(AppIn, await st.read_json(request))
    new = await apps.create_app(st.pool(request), body.name)
    return web.json_response(
        {"id": str(new.app_id), "appId": str(new.app_id), "name": new.name,
         "apiKey": new.api_key, "webhookSecret": new.webhook_secret},
        status=201,
    )


@routes.post("/v1/apps/{id}/keys")
async def create_key(request: web.Request) -> web.Response:
    app_id = st.path_uuid(request, "id", "app")
    key = await apps.create_key(st.pool(request), app_id)
    if key is None:
        raise NotFound(f"no app {app_id}", error_id="app-not-found")
    return web.json_response({"appId": str(app_id), "apiKey": key}, status=201)
