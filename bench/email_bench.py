"""(c) 10,000 emails through the hub to a local aiosmtpd vs a raw aiosmtplib loop with the
same concurrency, against the same SMTP server process, in the same run."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from email.message import EmailMessage

import aiohttp
import aiosmtplib

from bench.common import (
    free_port,
    fresh_database,
    new_app_key,
    processes,
    run_session,
    spawn,
    wait_http,
)

MESSAGES = 10_000
CONCURRENCY = 20


async def wait_smtp(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("SMTP sink did not start")


async def raw_loop(port: int) -> float:
    """Baseline: CONCURRENCY connections, each sending its share one message at a time."""
    per_conn = MESSAGES // CONCURRENCY

    async def conn(n: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await client.connect()
        for i in range(per_conn):
            msg = EmailMessage()
            msg["From"] = "a@example.com"
            msg["To"] = f"raw{n}-{i}@example.com"
            msg["Subject"] = "Bench"
            msg["Message-ID"] = f"<{uuid.uuid4()}@bench>"
            msg.set_content("Hello")
            await client.send_message(msg)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(conn(n) for n in range(CONCURRENCY)))
    return MESSAGES / (time.perf_counter() - start)


async def through_hub(url: str, key: str, smtp_port: int) -> float:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url + "/v1/transports", data=json.dumps({
            "name": "smtp", "type": "email",
            "config": {"host": "127.0.0.1", "port": smtp_port, "from": "a@example.com",
                       "max_connections": CONCURRENCY}})) as r:
            assert r.status == 201, await r.text()
        body = {"transport": {"type": "email", "subject": "Bench", "message": "Hello"},
                "audience": [f"hub{i}@example.com" for i in range(MESSAGES)]}
        session, elapsed = await run_session(http, url, body)
        assert session["counts"] == {"delivered": MESSAGES}, session["counts"]
    return MESSAGES / elapsed


async def main() -> dict[str, float]:
    await fresh_database()
    key = await new_app_key()
    smtp_port, api_port = free_port(), free_port()
    sink = spawn("hub.dev.smtp", str(smtp_port))
    api = spawn("hub.cli.main", "api", HUB_API_PORT=str(api_port))
    worker = spawn("hub.cli.main", "worker", HUB_SEND_CONCURRENCY=str(CONCURRENCY))
    url = f"http://127.0.0.1:{api_port}"
    with processes(sink, api, worker):
        await wait_smtp(smtp_port)
        wait_http(url + "/healthz")
        raw = await raw_loop(smtp_port)
        hub = await through_hub(url, key, smtp_port)
        raw2 = await raw_loop(smtp_port)
    baseline = (raw + raw2) / 2
    print(f"(c) {MESSAGES:,} emails, concurrency {CONCURRENCY}: hub {hub:.0f} msg/s, raw aiosmtplib"
          f" {baseline:.0f} msg/s (runs {raw:.0f}, {raw2:.0f}); ratio {hub / baseline:.2f}"
          " (target >= 0.70)")
    return {"hub_msgs_s": hub, "raw_msgs_s": baseline, "ratio": hub / baseline}


if __name__ == "__main__":
    asyncio.run(main())
