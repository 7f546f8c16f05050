"""10,000 SMS through the hub to the fake Twilio vs the raw `twilio` client (its asyncio
HTTP client) with the same concurrency, against the same fake process, in the same run.

The hub's time runs from `POST /v1/sessions` until the fake has accepted every message;
the fake also sends its status callbacks to the API meanwhile, as Twilio would."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
from twilio.rest import Client

from bench.common import free_port, fresh_database, new_app_key, processes, spawn, wait_http
from hub.transports.twilio import _LocalBaseUrl

MESSAGES = 10_000
CONCURRENCY = 20
CALLBACK_DELAY_S = os.environ.get("HUB_BENCH_CALLBACK_DELAY_S", "0.05")
SID = "AC" + "0123456789abcdef" * 2
TOKEN = "bench-auth-token-0123456789"


def number(i: int) -> str:
    return f"+977981{i:07d}"  # valid Nepali mobile numbers


async def accepted(http: aiohttp.ClientSession, fake: str) -> int:
    async with http.get(fake + "/_stats") as r:
        return int((await r.json())["messages"])


async def raw_loop(fake: str) -> float:
    http_client = _LocalBaseUrl(fake, 15.0)
    client = Client(SID, TOKEN, http_client=http_client)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(MESSAGES):
        queue.put_nowait(number(i))

    async def worker() -> None:
        while not queue.empty():
            to = queue.get_nowait()
            await client.messages.create_async(to=to, from_="+14155550100", body="Bench",
                                               status_callback=fake + "/void")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await http_client.close()
    return MESSAGES / elapsed


async def through_hub(url: str, key: str, fake: str) -> float:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url + "/v1/transports", data=json.dumps({
                "name": "twilio", "type": "sms", "config": {
                    "accountSid": SID, "authToken": TOKEN, "from": "+14155550100",
                    "baseUrl": fake}})) as r:
            assert r.status == 201, await r.text()
        before = await accepted(http, fake)
        body = {"transport": {"type": "sms", "message": "Bench"},
                "audience": [number(i) for i in range(MESSAGES)]}
        start = time.perf_counter()
        async with http.post(url + "/v1/sessions", data=json.dumps(body)) as r:
            assert r.status == 201, await r.text()
        while await accepted(http, fake) < before + MESSAGES:
            await asyncio.sleep(0.05)
        rate = MESSAGES / (time.perf_counter() - start)
        await settle(http, url)
        return rate


async def settle(http: aiohttp.ClientSession, url: str) -> None:
    """Let the receipts finish before the next measurement."""
    for _ in range(600):
        async with http.get(url + "/v1/sessions?status=running") as r:
            if not (await r.json())["items"]:
                return
        await asyncio.sleep(0.5)


async def main() -> dict[str, float]:
    await fresh_database()
    key = await new_app_key()
    fake_port, api_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    url = f"http://127.0.0.1:{api_port}"
    procs = [spawn("hub.dev.fake_twilio", str(fake_port), SID, TOKEN, CALLBACK_DELAY_S),
             spawn("hub.cli.main", "api", HUB_API_PORT=str(api_port)),
             spawn("hub.cli.main", "worker", HUB_SEND_CONCURRENCY=str(CONCURRENCY),
                   HUB_PUBLIC_URL=url)]
    with processes(*procs):
        wait_http(fake + "/_stats")
        wait_http(url + "/healthz")
        raw = await raw_loop(fake)
        hub = await through_hub(url, key, fake)
        raw2 = await raw_loop(fake)
    baseline = (raw + raw2) / 2
    print(f"(sms) {MESSAGES:,} SMS, concurrency {CONCURRENCY}: hub {hub:.0f} msg/s, raw twilio "
          f"client {baseline:.0f} msg/s (runs {raw:.0f}, {raw2:.0f}); ratio {hub / baseline:.2f}"
          " (target >= 0.70)")
    return {"hub_msgs_s": hub, "raw_msgs_s": baseline, "ratio": hub / baseline}



if __name__ == "__main__":
    asyncio.run(main())
