"""An open-loop load generator, run in its own process: POST /v1/sessions at a fixed rate
whatever the answers do, and print one JSON line with what happened.

Request i is due at t0 + i / rate; its latency runs from when it was due (not from when it
was sent), so a server or generator that falls behind shows up in the percentiles instead
of quietly lowering the offered rate (no coordinated omission). `lagMaxMs` says how late
the generator itself ever was in sending. A request refused or failed (any answer but
201, or no answer) counts in the percentiles as TIMEOUT_S: its client did not get its
session, so it cannot lower them.

    python -m bench.loadgen --url URL --key KEY --rate 500 --seconds 30 [--warmup 5]
        [--idempotent 0.5] [--webhook URL] [--audience 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

TIMEOUT_S = 10.0


def body(i: int, audience: int, webhook: str | None) -> bytes:
    options: dict[str, Any] = {"trigger": "immediate"}
    if webhook:
        options["webhookUrl"] = webhook
    return json.dumps({
        "transport": {"type": "email", "subject": "Bench", "message": "Hello"},
        "audience": [f"r{i}-{n}@example.com" for n in range(audience)],
        "options": options,
    }).encode()


async def phase(http: aiohttp.ClientSession, url: str, rate: float, seconds: float,
                args: argparse.Namespace, run: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lag_max = 0.0
    last_done = 0.0
    every = round(1 / args.idempotent) if args.idempotent > 0 else 0

    async def one(i: int, due: float) -> None:
        nonlocal last_done
        headers = {"Content-Type": "application/json"}
        if every and i % every == 0:
            headers["Idempotency-Key"] = f"{run}-{i}"
        try:
            async with http.post(url, data=body(i, args.audience, args.webhook),
                                 headers=headers) as r:
                await r.read()
                if r.status != 201:
                    errors[str(r.status)] += 1
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            return
        done = loop.time()
        last_done = max(last_done, done)
        latencies.append(done - due)

    tasks = []
    start = loop.time() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_max = max(lag_max, -delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    ok = len(latencies)
    counted = sorted(latencies + [TIMEOUT_S] * sum(errors.values()))  # failures: that late

    def pct(q: float) -> float | None:
        n = len(counted)
        return round(counted[min(n - 1, int(q * n))] * 1000, 2) if n else None

    elapsed = max(last_done - start, seconds) if ok else seconds
    return {"offered": rate, "seconds": seconds, "sent": total, "ok": ok,
            "errors": dict(errors), "errorCount": sum(errors.values()),
            "achieved": round(ok / elapsed, 1), "p50Ms": pct(0.50), "p90Ms": pct(0.90),
            "p99Ms": pct(0.99), "maxMs": round(max(latencies) * 1000, 2) if ok else None,
            "lagMaxMs": round(lag_max * 1000, 2)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.connections)
    headers = {"Authorization": f"Bearer {args.key}"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    run = uuid.uuid4().hex[:12]
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=timeout) as http:
        if args.warmup > 0:  # a warm pool, warm caches, warm connections
            await phase(http, args.url, min(args.rate, args.warmup_rate), args.warmup, args,
                        run + "w")
        started = time.time()
        out = await phase(http, args.url, args.rate, args.seconds, args, run)
    out["startedAt"] = started
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the full POST URL")
    p.add_argument("--key", default="none")
    p.add_argument("--rate", type=float, required=True, help="requests per second, offered")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up first")
    p.add_argument("--warmup-rate", type=float, default=250.0)
    p.add_argument("--idempotent", type=float, default=0.5,
                   help="share of requests carrying an Idempotency-Key")
    p.add_argument("--webhook", default=None, help="options.webhookUrl of every instruction")
    p.add_argument("--audience", type=int, default=2)
    p.add_argument("--connections", type=int, default=1000)
    return p.parse_args(argv)


if __name__ == "__main__":
    result = asyncio.run(main(parse()))
    json.dump(result, sys.stdout)
    print(flush=True)
