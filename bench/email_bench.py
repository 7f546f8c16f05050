"""Email throughput (issue 12 part 3): N emails through the hub vs a raw aiosmtplib loop
with the same concurrency, to the same counting SMTP sink process (`bench.smtp_sink`).

- raw: CONCURRENCY connections, each building and sending its share one message at a
  time; its time ends when the last message is accepted.
- hub: one immediate session of N recipients handled by one `hub worker`; its time is
  the session's `endedAt − createdAt` read from the database (every delivery recorded,
  the session closed), not when the sink saw the last message.
Every count is asserted: the session's `delivered` = N with nothing else, one attempt
per delivery, and the sink got exactly N messages for N recipients in each run.
Trials alternate raw and hub. Target: hub ≥ 0.9× raw.

    python -m bench.email_bench [--quick] [--trials N]
"""

from __future__ import annotations

import asyncio
import time
import uuid
from email.message import EmailMessage

import aiohttp
import aiosmtplib

from bench import common
from bench.results import Figure

MESSAGES = 10_000
QUICK_MESSAGES = 300
CONCURRENCY = 20


async def sink_count(http: aiohttp.ClientSession, stats: str) -> tuple[int, int]:
    async with http.get(stats) as r:
        got = await r.json()
    return int(got["messages"]), int(got["recipients"])


async def raw_loop(port: int, n: int) -> float:
    """Baseline: CONCURRENCY connections, each sending its share one message at a time."""
    shares = [n // CONCURRENCY + (1 if i < n % CONCURRENCY else 0) for i in range(CONCURRENCY)]

    async def conn(c: int, share: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await client.connect()
        for i in range(share):
            msg = EmailMessage()
            msg["From"] = "a@example.com"
            msg["To"] = f"raw{c}-{i}@example.com"
            msg["Subject"] = "Bench"
            msg["Message-ID"] = f"<{uuid.uuid4()}@bench>"
            msg.set_content("Hello")
            await client.send_message(msg)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(conn(c, s) for c, s in enumerate(shares)))
    return n / (time.perf_counter() - start)


async def through_hub(http: aiohttp.ClientSession, url: str, n: int, trial: int) -> float:
    body = {"transport": {"type": "email", "subject": "Bench", "message": "Hello"},
            "audience": [f"hub{trial}-{i}@example.com" for i in range(n)],
            "options": {"trigger": "immediate"}}
    return await common.session_rate(await common.deliver_all(http, url, body, n), n)


async def main(opts: common.Options) -> list[Figure]:
    n = opts.pick(MESSAGES, QUICK_MESSAGES)
    await common.fresh_database()
    key = await common.new_app_key()
    smtp_port, stats_port, api_port = common.free_port(), common.free_port(), common.free_port()
    stats = f"http://127.0.0.1:{stats_port}/_count"
    url = f"http://127.0.0.1:{api_port}"
    procs = [common.spawn("bench.smtp_sink", str(smtp_port), str(stats_port)),
             common.spawn("hub.cli.main", "api", HUB_API_PORT=str(api_port)),
             common.spawn("hub.cli.main", "worker", HUB_SEND_CONCURRENCY=str(CONCURRENCY))]
    raw: list[float] = []
    hub: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with common.processes(*procs):
        common.wait_http(stats)
        common.wait_http(url + "/healthz")
        async with aiohttp.ClientSession(headers=headers) as http:
            await common.add_email_transport(http, url, smtp_port, max_connections=CONCURRENCY)
            for trial in range(opts.trials):
                for kind, runs in (("raw", raw), ("hub", hub)):
                    before = await sink_count(http, stats)
                    if kind == "raw":
                        runs.append(await raw_loop(smtp_port, n))
                    else:
                        runs.append(await through_hub(http, url, n, trial))
                    after = await sink_count(http, stats)
                    got = (after[0] - before[0], after[1] - before[1])
                    assert got == (n, n), f"{kind}: the sink got {got}, expected {(n, n)}"
    return [Figure("email.throughput", "msg/s", hub, ">=", 0.9, baseline=raw, on_ratio=True,
                   note=f"{n:,} emails, concurrency {CONCURRENCY}; hub timed to endedAt in"
                        " the database; baseline: raw aiosmtplib loop")]


if __name__ == "__main__":
    common.cli(main, __doc__)
