"""A counting HTTP sink in its own process: answers 200 to every request (a form body is
parsed, as a real receiver would) and counts them (GET /_count). Webhooks and the raw SMS
run's status callbacks go here, so that no measured process serves its own callbacks.

    python -m bench.sink PORT
"""

from __future__ import annotations

import sys

from aiohttp import web

COUNT = web.AppKey("count", list)


async def count(request: web.Request) -> web.Response:
    return web.json_response({"count": request.app[COUNT][0]})


async def take(request: web.Request) -> web.Response:
    if request.content_type == "application/x-www-form-urlencoded":
        await request.post()
    else:
        await request.read()
    request.app[COUNT][0] += 1
    return web.Response(text="ok")


def app() -> web.Application:
    application = web.Application()
    application[COUNT] = [0]
    application.router.add_get("/_count", count)
    application.router.add_route("*", "/{tail:.*}", take)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
