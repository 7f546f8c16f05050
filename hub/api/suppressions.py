"""The app's do-not-contact list."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hub.api import state as st
from hub.errors import NotFound, Unprocessable, detail
from hub.instruction import TransportType
from hub.store import suppressions
from hub.transports.registry import spec_for

routes = web.RouteTableDef()


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    addresses: list[str] = Field(min_length=1, max_length=100_000)
    transport: TransportType | None = None
    reason: str | None = Field(default=None, max_length=500)


def _normalise(address: str, transport: str | None) -> str:
    """Normalise like the transports do, so that the check before each attempt matches."""
    kinds = [transport] if transport else ["email", "sms"]
    for kind in kinds:
        try:
            return str(spec_for(kind).normalize_address(address))
        except ValueError:
            continue
    return address.strip()


@routes.post("/v1/suppressions")
async def add(request: web.Request) -> web.Response:
    body = st.parse_model(SuppressionIn, await st.read_json(request))
    first: dict[str, int] = {}
    problems = []
    for i, raw in enumerate(body.addresses):
        address = _normalise(raw, body.transport) if raw.strip() else ""
        if not address:
            problems.append(detail(["addresses", i], "must not be empty"))
        elif address in first:
            problems.append(detail(["addresses", i],
                                   f"the same address as addresses[{first[address]}]"))
        else:
            first[address] = i
    if problems:
        raise Unprocessable(f"{len(problems)} of the addresses are empty or repeated; list each"
                            " address once", error_id="invalid-body", details=problems[:1000])
    entries = [(address, body.transport) for address in first]
    rows = await suppressions.add(st.pool(request), st.app_id(request), entries, body.reason)
    return web.json_response({"items": rows, "nextCursor": None}, status=201)


@routes.get("/v1/suppressions")
async def list_(request: web.Request) -> web.Response:
    items, nxt = await suppressions.list_(
        st.pool(request), st.app_id(request), limit=st.query_limit(request),
        cursor=request.query.get("cursor"), address=request.query.get("address"),
    )
    return st.page(items, nxt)


@routes.delete("/v1/suppressions/{id}")
async def remove(request: web.Request) -> web.Response:
    sid = st.path_uuid(request, "id", "suppression")
    if not await suppressions.remove(st.pool(request), st.app_id(request), sid):
        raise NotFound(f"no suppression {sid} in this app", error_id="suppression-not-found")
    return web.Response(status=204)
