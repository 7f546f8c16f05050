"""SMS throughput (issue 12 part 3): N SMS through the hub vs the raw `twilio` client (its
asyncio HTTP client) with the same concurrency, against the same fake Twilio process,
which posts the status callbacks Twilio would (`sent`, then `delivered`).

- raw: the client sends every message with `status_callback` pointing at a separate
  counting process (`bench.sink`), never at the process that sends; its time ends when
  the sink has received every callback (2 per message).
- hub: one immediate session; the callbacks go to the hub's API, as in production; its
  time runs to the last receipt applied: the session's `endedAt − createdAt` from the
  database (a delivery is final, and the session closes, only once its receipt is in).
Final counts are asserted: the fake accepted exactly N messages per run; the session has
`delivered` = N, one attempt each; the sink got 2N callbacks.
Trials alternate raw and hub. Each run also gives the CPU milliseconds every process group
spent per message (`bench.cpu`; `bench` is the raw client, or the hub run's poller).
Target: hub ≥ 0.85× raw.

    python -m bench.sms_bench [--quick] [--trials N]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import warnings
from typing import Any

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from bench import common
from bench.cpu import CpuMeter
from bench.results import Figure

MESSAGES = 10_000
warnings.filterwarnings("ignore", "The .auth. parameter is deprecated", DeprecationWarning)
QUICK_MESSAGES = 200
CONCURRENCY = 20
CALLBACKS_PER_MESSAGE = 2  # sent, delivered
CALLBACK_DELAY_S = os.environ.get("HUB_BENCH_CALLBACK_DELAY_S", "0.05")
SID = "AC" + "0123456789abcdef" * 2
TOKEN = "bench-auth-token-0123456789"
FROM = "+14155550100"
CPU_GROUPS = {"fake": "hub.dev.fake_twilio", "sink": "bench.sink", "api": "hub.cli.main api",
              "worker": "hub.cli.main worker", "postgres": "postgres", "redis": "redis-server"}


class LocalTwilio(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The library's own asyncio client (pooled connections), sent to the fake."""

    def __init__(self, base: str) -> None:
        super().__init__(pool_connections=True, timeout=15.0)
        self._base = base

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        return await super().request(method, re.sub(r"^https://[^/]+", self._base, url),
                                     *args, **kwargs)


def number(trial: int, i: int) -> str:
    return f"+97798{trial % 10}{i:07d}"  # valid Nepali mobile numbers


async def get_int(http: aiohttp.ClientSession, url: str, field: str) -> int:
    async with http.get(url) as r:
        return int((await r.json())[field])


async def raw_loop(http: aiohttp.ClientSession, fake: str, sink: str, n: int,
                   trial: int) -> float:
    http_client = LocalTwilio(fake)
    client = Client(SID, TOKEN, http_client=http_client)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(number(trial, i))
    seen = await get_int(http, sink + "/_count", "count")

    async def worker() -> None:
        while not queue.empty():
            to = queue.get_nowait()
            await client.messages.create_async(to=to, from_=FROM, body="Bench",
                                               status_callback=sink + "/status")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    want = seen + CALLBACKS_PER_MESSAGE * n
    while await get_int(http, sink + "/_count", "count") < want:
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - start
    await http_client.close()
    assert await get_int(http, sink + "/_count", "count") == want, "extra callbacks"
    return n / elapsed


async def through_hub(http: aiohttp.ClientSession, url: str, n: int, trial: int) -> float:
    body = {"transport": {"type": "sms", "message": "Bench"},
            "audience": [number(trial, i) for i in range(n)],
            "options": {"trigger": "immediate"}}
    return await common.session_rate(await common.deliver_all(http, url, body, n), n)


async def main(opts: common.Options) -> list[Figure]:
    n = opts.pick(MESSAGES, QUICK_MESSAGES)
    await common.fresh_database()
    key = await common.new_app_key()
    fake_port, api_port, sink_port = common.free_port(), common.free_port(), common.free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    url = f"http://127.0.0.1:{api_port}"
    sink = f"http://127.0.0.1:{sink_port}"
    procs = [common.spawn("hub.dev.fake_twilio", str(fake_port), SID, TOKEN, CALLBACK_DELAY_S),
             common.spawn("bench.sink", str(sink_port)),
             common.spawn("hub.cli.main", "api", HUB_API_PORT=str(api_port)),
             common.spawn("hub.cli.main", "worker", HUB_SEND_CONCURRENCY=str(CONCURRENCY),
                   HUB_PUBLIC_URL=url)]
    raw: list[float] = []
    hub: list[float] = []
    cpu: dict[str, list[dict[str, float]]] = {"raw": [], "hub": []}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with common.processes(*procs):
        common.wait_http(fake + "/_stats")
        common.wait_http(sink + "/_count")
        common.wait_http(url + "/healthz")
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(url + "/v1/transports", data=json.dumps({
                    "name": "twilio", "type": "sms", "config": {
                        "accountSid": SID, "authToken": TOKEN, "from": FROM,
                        "baseUrl": fake}})) as r:
                assert r.status == 201, await r.text()
            for trial in range(opts.trials):
                for kind, runs in (("raw", raw), ("hub", hub)):
                    before = await get_int(http, fake + "/_stats", "messages")
                    meter = CpuMeter(CPU_GROUPS)
                    if kind == "raw":
                        runs.append(await raw_loop(http, fake, sink, n, trial))
                    else:
                        runs.append(await through_hub(http, url, n, trial))
                    cpu[kind].append(meter.per_unit_ms(n))
                    got = await get_int(http, fake + "/_stats", "messages") - before
                    assert got == n, f"{kind}: the fake accepted {got} messages, expected {n}"
    return [Figure("sms.throughput", "msg/s", hub, ">=", 0.85, baseline=raw, on_ratio=True,
                   extra={"cpuMsPerMessage": cpu["hub"], "baselineCpuMsPerMessage": cpu["raw"]},
                   note=f"{n:,} SMS, concurrency {CONCURRENCY}; both timed to receipts"
                        " processed (hub: endedAt in the database; raw: the callback sink"
                        " process got every callback)")]


if __name__ == "__main__":
    common.cli(main, __doc__)
