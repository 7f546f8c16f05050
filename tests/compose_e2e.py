"""The container test's traffic (run by scripts/compose-test.sh once the compose stack is
healthy): through the containerised API only, with the admin key, an app is created and
granted the trunk; one voice broadcast goes through the containerised worker, controller
and Asterisk to SIPp phones on the host (what they hear is counted as RTP), and one email
to an aiosmtpd sink on the host. Prints `PASS name` / `FAIL name: why` per check and
exits 1 if any failed.

Environment: HUB_API_URL, HUB_ADMIN_KEY, HUB_PHONES_PORT (the trunk's contact port),
HUB_SMTP_PORT; all on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from hub.dev import smtp
from hub.dev.phones import Phones, RtpCounter

API = os.environ.get("HUB_API_URL", "http://127.0.0.1:18080")
ADMIN = os.environ["HUB_ADMIN_KEY"]
PHONES_PORT = int(os.environ.get("HUB_PHONES_PORT", "5074"))
SMTP_PORT = int(os.environ.get("HUB_SMTP_PORT", "0"))
NUMBERS = ["+9779812345610", "+9779812345620"]  # last digit 0: the phone answers
MESSAGE = "Hello from the containerised hub. This message was played through Asterisk."
EMAIL = "ram@example.com"

results: list[tuple[str, str | None]] = []


def check(name: str, ok: bool, why: str = "") -> bool:
    results.append((name, None if ok else (why or "failed")))
    print(f"PASS {name}" if ok else f"FAIL {name}: {why}", flush=True)
    return ok


class Client:
    def __init__(self, http: aiohttp.ClientSession, key: str) -> None:
        self.http = http
        self.key = key

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, API + path, json=body,
                                     headers={"Authorization": f"Bearer {self.key}"}) as r:
            return r.status, await r.json(content_type=None)


async def until(what: Callable[[], Awaitable[dict[str, Any] | None]],
                timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await what()
        if got is not None:
            return got
        await asyncio.sleep(0.5)
    return None


async def finished(client: Client, sid: str, timeout_s: float) -> dict[str, Any] | None:
    async def done() -> dict[str, Any] | None:
        status, body = await client.call("GET", f"/v1/sessions/{sid}")
        return body if status == 200 and body["status"] == "completed" else None
    return await until(done, timeout_s)


async def deliveries(client: Client, sid: str) -> list[dict[str, Any]]:
    status, body = await client.call("GET", f"/v1/sessions/{sid}/deliveries?limit=100")
    return list(body["items"]) if status == 200 else []


async def run(workdir: Path) -> None:
    sink_ctl, sink = smtp.start(SMTP_PORT)
    rtp = RtpCounter()
    await rtp.start()
    phones = Phones(workdir, rtp.port, sip_port=PHONES_PORT)
    phones.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await traffic(http, sink_ctl.port, sink, rtp)
    finally:
        phones.stop()
        rtp.stop()
        sink_ctl.stop()


async def traffic(http: aiohttp.ClientSession, smtp_port: int, sink: smtp.SmtpSink,
                  rtp: RtpCounter) -> None:
    want = int(os.environ.get("HUB_API_PROCESSES") or "1")
    async with http.get(f"{API}/metrics") as resp:
        serving = [line for line in (await resp.text()).splitlines()
                   if line.startswith("hub_api_processes ")]
    check(f"the API container serves with {want} process(es) (HUB_API_PROCESSES)",
          serving == [f"hub_api_processes {want:.1f}"], f"{resp.status} {serving}")
    admin = Client(http, ADMIN)
    status, app = await admin.call("POST", "/v1/apps", {"name": "compose-e2e"})
    if not check("app created through the API with the admin key", status == 201,
                 f"{status} {app}"):
        return
    status, body = await admin.call("POST", f"/v1/apps/{app['appId']}/trunks", {"trunk": "trunk"})
    check("trunk granted to the app", status in (200, 201), f"{status} {body}")
    client = Client(http, app["apiKey"])
    status, body = await client.call("POST", "/v1/transports", {
        "name": "trunk", "type": "voice",
        "config": {"trunk": "trunk", "callerId": "+9771000000", "maxChannels": 4, "cps": 4,
                   "ringTimeoutS": 10}})
    check("voice transport registered", status == 201, f"{status} {body}")
    status, body = await client.call("POST", "/v1/transports", {
        "name": "smtp", "type": "email",
        "config": {"host": "127.0.0.1", "port": smtp_port, "from": "Hub <hub@example.com>"}})
    check("email transport registered", status == 201, f"{status} {body}")

    status, voice = await client.call("POST", "/v1/sessions", {
        "transport": {"type": "voice", "message": MESSAGE}, "audience": NUMBERS})
    status_e, email = await client.call("POST", "/v1/sessions", {
        "transport": {"type": "email", "subject": "Hello", "message": "From the containers."},
        "audience": [EMAIL]})
    if not check("sessions accepted", status == 201 and status_e == 201,
                 f"voice {status} {voice}; email {status_e} {email}"):
        return

    done = await finished(client, email["sessionId"], 60)
    check("email session completed, delivered", done is not None
          and done["counts"] == {"delivered": 1}, f"{done}")
    got = sink.for_address(EMAIL)
    check("the SMTP sink received the email once", len(got) == 1, f"{len(got)} received")

    done = await finished(client, voice["sessionId"], 120)
    rows = await deliveries(client, voice["sessionId"])
    check("voice session completed, both delivered", done is not None
          and done["counts"] == {"delivered": len(NUMBERS)}, f"{done} {rows}")
    check("each delivery: one answered call, audio played to its end",
          all(r["status"] == "delivered" and r["attempts"] == 1 for r in rows)
          and len(rows) == len(NUMBERS), f"{rows}")
    streams = rtp.summary()
    # The message lasts about 5 s: 20 ms packets, so well over 150 per phone.
    check("the phones heard the message (RTP per call)", len(streams) == len(NUMBERS)
          and all(packets >= 150 for packets, _ in streams), f"streams {streams}")
    status, report = await client.call("GET", f"/v1/sessions/{voice['sessionId']}/report")
    voice_report = report.get("voice", {}) if status == 200 else {}
    check("the report: every attempt answered (ASR 1.0)", voice_report.get("asr") == 1.0
          and report.get("byOutcome") == {"answered": len(NUMBERS)}, f"{status} {report}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="compose-e2e-") as tmp:
        try:
            asyncio.run(run(Path(tmp)))
        except Exception as exc:  # a crash of the driver is a failed check, with the reason
            check("the e2e driver ran to its end", False, f"{type(exc).__name__}: {exc}")
    return 0 if results and all(why is None for _, why in results) else 1


if __name__ == "__main__":
    sys.exit(main())
