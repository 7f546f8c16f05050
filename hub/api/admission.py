"""Admission: an API process past its capacity answers at once instead of queueing.

Requests to the client API (`/v1/…`, not provider callbacks) beyond
`HUB_API_MAX_IN_FLIGHT` being served at once get 503 `overloaded` with `Retry-After: 1`
before anything is stored. A request is counted once its body has arrived, so clients
uploading slowly cannot fill the bound and lock every other client out. Without the
bound, an overloaded process queues every request, all of them wait longer than their
clients do, the clients time out and retry,
and the work done for requests already given up on lowers what the process gets done
(measured: 400 req/s at capacity fell to ~200 at 2.5x the load). With it, admitted
requests keep their latency and the rest learn at once to come back.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from hub.api import state as st
from hub.api.callbacks import PREFIX as CALLBACKS
from hub.errors import Unavailable
from hub.observe import metrics


class InFlight:
    """How many client-API requests this process is serving now."""

    def __init__(self) -> None:
        self.count = 0


IN_FLIGHT = web.AppKey("in_flight", InFlight)


def overloaded(limit: int) -> Unavailable:
    return Unavailable(f"this API process is serving its limit of {limit} requests at once"
                       " (HUB_API_MAX_IN_FLIGHT); retry shortly", error_id="overloaded",
                       headers={"Retry-After": "1"})


@web.middleware
async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = st.settings(request).api_max_in_flight
    if not limit or not request.path.startswith("/v1/") or request.path.startswith(CALLBACKS):
        return await handler(request)
    if request.body_exists:
        await request.read()  # a slow upload holds its connection, not a place in the bound
    in_flight = request.app[IN_FLIGHT]
    if in_flight.count >= limit:
        metrics.overloaded()
        raise overloaded(limit)
    in_flight.count += 1
    try:
        return await handler(request)
    finally:
        in_flight.count -= 1
