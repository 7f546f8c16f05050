"""`GET /v1/usage`: the app's usage per UTC day and transport type (DESIGN §3)."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from hub.api import state as st
from hub.errors import Unprocessable, detail
from hub.store import usage

routes = web.RouteTableDef()
DEFAULT_DAYS = 30   # without ?from: the 30 days ending with ?to (default today, UTC)
MAX_DAYS = 366      # a longer range is refused


def _date(request: web.Request, name: str) -> dt.date | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Unprocessable(f"{name} must be a date, YYYY-MM-DD", error_id="bad-parameter",
                            details=[detail(["query", name], "not a date (YYYY-MM-DD)")]
                            ) from None


def date_range(request: web.Request) -> tuple[dt.date, dt.date]:
    """(from, to) from the query, both inclusive; defaults: to = today (UTC), from = 29
    days before `to`."""
    date_to = _date(request, "to") or dt.datetime.now(dt.UTC).date()
    date_from = _date(request, "from") or date_to - dt.timedelta(days=DEFAULT_DAYS - 1)
    if date_from > date_to:
        raise Unprocessable("from is after to", error_id="bad-parameter",
                            details=[detail(["query", "from"], "must not be after to")])
    if (date_to - date_from).days + 1 > MAX_DAYS:
        raise Unprocessable(f"the range is longer than {MAX_DAYS} days",
                            error_id="bad-parameter",
                            details=[detail(["query", "to"],
                                            f"at most {MAX_DAYS} days after from, inclusive")])
    return date_from, date_to


@routes.get("/v1/usage")
async def get_usage(request: web.Request) -> web.Response:
    date_from, date_to = date_range(request)
    items = await usage.daily(st.pool(request), st.app_id(request), date_from, date_to)
    return web.json_response({"from": date_from.isoformat(), "to": date_to.isoformat(),
                              "items": items})
