"""A local stand-in for Twilio's Messages API, for the demo, tests and benchmarks: the
real `twilio` library talks to it over HTTP (the transport's `baseUrl`).

It checks Basic auth, answers `POST /2010-04-01/Accounts/{sid}/Messages.json` like Twilio
(201 with the message resource, or Twilio's error body), then posts the status callbacks
Twilio would (`sent`, then `delivered` or `undelivered`), signed with X-Twilio-Signature.
Scripts per number decide each answer:
    "ok" | "undelivered:30003" | "error:21211" | "error:429" | "error:500" | "silent"
    | "early-undelivered:30003" | "early-delivered"
("silent": accepted, no final callback; "early-...": the final callback is sent, and
answered, before the create request is answered, as Twilio may do within milliseconds).
Numbers without a script get "ok".
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from hub.transports.segments import segments

ERRORS = {
    21211: (400, "The 'To' number is not a valid phone number."),
    21614: (400, "'To' number is not a valid mobile number"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    63016: (400, "Failed to send freeform message because you are outside the allowed window"),
    429: (429, "Too Many Requests"),
    500: (500, "Internal Server Error"),
    503: (503, "Service Unavailable"),
}


@dataclass
class Sent:
    sid: str
    params: dict[str, str]
    callbacks: list[dict[str, str]] = field(default_factory=list)


class FakeTwilio:
    def __init__(self, account_sid: str, auth_token: str, callback_delay_s: float = 0.05) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.callback_delay_s = callback_delay_s
        self.scripts: dict[str, list[str]] = {}
        self.messages: list[Sent] = []
        self.requests = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.create)
        app.router.add_get("/_stats", self.stats)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": len(self.messages), "requests": self.requests})

    async def start(self, port: int, host: str = "127.0.0.1") -> None:
        self._http = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()
        if self._http:
            await self._http.close()

    def _authorised(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}" and \
            request.match_info["sid"] == self.account_sid

    async def create(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self._authorised(request):
            return _error(20003, 401, "Authenticate")
        params = {k: str(v) for k, v in (await request.post()).items()}
        number = params.get("To", "").removeprefix("whatsapp:")
        queue = self.scripts.get(number)
        script = queue.pop(0) if queue else "ok"
        if script.startswith("error:"):
            code = int(script.split(":")[1])
            status, message = ERRORS.get(code, (400, "Error"))
            return _error(code, status, message)
        sid = "SM" + secrets.token_hex(16)
        sent = Sent(sid, params)
        self.messages.append(sent)
        if params.get("StatusCallback") and script.startswith("early-"):
            await self._post_callback(sent, _final(script.removeprefix("early-")))
        elif params.get("StatusCallback") and script != "silent":
            task = asyncio.create_task(self._callbacks(sent, script))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(self._resource(sid, params), status=201)

    def _resource(self, sid: str, params: dict[str, str]) -> dict[str, Any]:
        now = email.utils.formatdate(usegmt=True)
        return {
            "sid": sid, "account_sid": self.account_sid, "to": params.get("To"),
            "from": params.get("From"), "messaging_service_sid": params.get("MessagingServiceSid"),
            "body": params.get("Body", ""), "status": "queued",
            "num_segments": str(segments(params.get("Body", ""))["segments"]),
            "num_media": "1" if params.get("MediaUrl") else "0", "direction": "outbound-api",
            "api_version": "2010-04-01", "price": None, "price_unit": "USD",
            "error_code": None, "error_message": None, "date_created": now,
            "date_updated": now, "date_sent": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {}}

    async def _callbacks(self, sent: Sent, script: str) -> None:
        for extra in ({"MessageStatus": "sent"}, _final(script)):
            await asyncio.sleep(self.callback_delay_s)
            await self._post_callback(sent, extra)

    async def _post_callback(self, sent: Sent, extra: dict[str, str]) -> None:
        assert self._http is not None
        url = sent.params["StatusCallback"]
        params = {"MessageSid": sent.sid, "AccountSid": self.account_sid,
                  "To": sent.params.get("To", ""), "From": sent.params.get("From", ""),
                  "ApiVersion": "2010-04-01", **extra}
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        sent.callbacks.append(params)
        try:
            async with self._http.post(url, data=params,
                                       headers={"X-Twilio-Signature": signature}) as r:
                await r.read()
        except aiohttp.ClientError:
            pass

    def by_number(self, number: str) -> list[Sent]:
        return [m for m in self.messages if m.params.get("To", "").removeprefix("whatsapp:") == number]


def _final(script: str) -> dict[str, str]:
    """The final status callback a script ends with."""
    if script.startswith("undelivered:"):
        return {"MessageStatus": "undelivered", "ErrorCode": script.split(":")[1]}
    return {"MessageStatus": "delivered"}


def _error(code: int, status: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                             status=status)


async def _serve(port: int, account_sid: str, auth_token: str, delay_s: float) -> None:
    fake = FakeTwilio(account_sid, auth_token, callback_delay_s=delay_s)
    await fake.start(port)
    print(f"fake Twilio on {fake.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # python -m hub.dev.fake_twilio PORT SID TOKEN [CALLBACK_DELAY_S]
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2], sys.argv[3],
                       float(sys.argv[4]) if len(sys.argv) > 4 else 0.05))
