"""A counting SMTP sink in its own process (aiosmtpd): accepts every message, counts
messages and recipients, and tells the counts over HTTP (GET /_count on the second port).
The raw loop and the hub send to the same sink, so it costs both the same.

    python -m bench.smtp_sink SMTP_PORT HTTP_PORT
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.messages += 1
            self.recipients += len(envelope.rcpt_tos)
        return "250 OK"


def main(smtp_port: int, http_port: int) -> None:
    counter = Counter()
    controller = Controller(counter, hostname="127.0.0.1", port=smtp_port)
    controller.start()

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"messages": counter.messages, "recipients": counter.recipients})

    app = web.Application()
    app.router.add_get("/_count", count)
    try:
        web.run_app(app, host="127.0.0.1", port=http_port, access_log=None, print=None)
    finally:
        controller.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
