"""API benchmarks.

(a) POST /v1/sessions with a 100,000-recipient email audience: median time to 201 and the
    API process's RSS growth; baseline: a raw asyncpg COPY of the same 100,000 rows.
(b) small instructions at 50 concurrent clients: requests/s and p99 latency; baseline: an
    aiohttp handler that answers 201 with a fixed body, same client, same run.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import asyncpg
from aiohttp import web

from bench.common import (
    DB_URL,
    free_port,
    fresh_database,
    median,
    new_app_key,
    pct,
    processes,
    rss_mb,
    spawn,
    wait_http,
)

BIG = 100_000
RUNS = 5
CLIENTS = 50
SMALL_REQUESTS = 3000


def instruction(audience: list[str], trigger: str = "manual") -> dict[str, object]:
    return {"transport": {"type": "email", "subject": "Bench", "message": "Hello"},
            "audience": audience, "options": {"trigger": trigger}}


async def raw_copy_baseline(audience: list[str]) -> float:
    conn = await asyncpg.connect(DB_URL)
    # The same table shape and indexes as `deliveries`, without the foreign key.
    await conn.execute("DROP TABLE IF EXISTS bench_copy")
    await conn.execute("CREATE TABLE bench_copy (LIKE deliveries INCLUDING ALL)")
    times = []
    for _ in range(RUNS):
        sid = uuid.uuid4()
        start = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_copy", records=((sid, a, "pending", None) for a in audience),
            columns=["session_id", "address", "status", "next_attempt_at"])
        times.append(time.perf_counter() - start)
    await conn.execute("DROP TABLE bench_copy")
    await conn.close()
    return median(times)


async def big_sessions(url: str, key: str, pid: int) -> tuple[float, float]:
    audience = [f"user{i}@example{i % 97}.com" for i in range(BIG)]
    body = json.dumps(instruction(audience)).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    times = []
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/sessions", data=json.dumps(instruction(["w@x.io"])),
                             headers=headers) as r:
            assert r.status == 201, await r.text()
        rss_before = rss_mb(pid)
        for _ in range(RUNS):
            start = time.perf_counter()
            async with http.post(url + "/v1/sessions", data=body, headers=headers) as r:
                assert r.status == 201, await r.text()
                await r.read()
            times.append(time.perf_counter() - start)
        rss_after = rss_mb(pid)
    return median(times), rss_after - rss_before


async def load(url: str, headers: dict[str, str], body: bytes) -> tuple[float, float]:
    latencies: list[float] = []
    per_client = SMALL_REQUESTS // CLIENTS
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def client() -> None:
            for _ in range(per_client):
                start = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 201, r.status
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, pct(latencies, 0.99)


async def baseline_server() -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"sessionId": str(uuid.uuid4()), "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/sessions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1/sessions"


async def main() -> dict[str, float]:
    await fresh_database()
    key = await new_app_key()
    port = free_port()
    api = spawn("hub.cli.main", "api", HUB_API_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    results: dict[str, float] = {}
    with processes(api):
        wait_http(url + "/healthz")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            await http.post(url + "/v1/transports", headers=headers, data=json.dumps({
                "name": "smtp", "type": "email",
                "config": {"host": "127.0.0.1", "port": 2525, "from": "a@example.com"}}))
        audience = [f"user{i}@example{i % 97}.com" for i in range(BIG)]
        copy_s = await raw_copy_baseline(audience)
        big_s, rss_growth = await big_sessions(url, key, api.pid)
        print(f"(a) POST /v1/sessions, {BIG:,} recipients: median {big_s:.3f} s (target <= 1.5 s);"
              f" raw COPY baseline {copy_s:.3f} s, ratio {big_s / copy_s:.1f}x;"
              f" API RSS growth {rss_growth:.0f} MB (target <= 300 MB)")
        small = json.dumps(instruction(["a@example.com", "b@example.com"])).encode()
        runner, base_url = await baseline_server()
        try:
            raw_rps, raw_p99 = await load(base_url, headers, small)
        finally:
            await runner.cleanup()
        rps, p99 = await load(url + "/v1/sessions", headers, small)
        print(f"(b) small instructions, {CLIENTS} clients: {rps:.0f} req/s, p99 {p99 * 1000:.0f} ms;"
              f" bare aiohttp baseline {raw_rps:.0f} req/s, p99 {raw_p99 * 1000:.0f} ms;"
              f" ratio {rps / raw_rps:.2f}")
        results.update(big_median_s=big_s, rss_growth_mb=rss_growth, copy_s=copy_s,
                       small_rps=rps, small_p99_s=p99, small_ratio=rps / raw_rps)
    return results


if __name__ == "__main__":
    asyncio.run(main())
