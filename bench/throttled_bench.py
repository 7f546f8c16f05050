"""(t) A provider throttled by `mps`, slower than the lease: 600 messages at 20 per second
through the hub with a 3 s lease (the campaign outlasts ten leases), two workers. Prints
the rate reached against the contract and the duplicates seen at the provider (must be 0),
and asserts every recipient got exactly one message."""

from __future__ import annotations

import collections
import json

import aiohttp

from bench.common import (
    Options,
    cli,
    free_port,
    fresh_database,
    new_app_key,
    processes,
    run_session,
    spawn,
    wait_http,
)
from bench.results import Figure
from hub.dev.fake_http import HttpSink

MESSAGES = 600
MPS = 20.0


async def main(opts: Options) -> list[Figure]:
    rates, dups = [], []
    for _ in range(opts.trials):
        rate, duplicates = await trial(opts.pick(MESSAGES, 100))
        rates.append(rate)
        dups.append(float(duplicates))
    return [Figure("throttled.rate_vs_mps", "ratio", [r / MPS for r in rates], ">=", 0.9,
                   note=f"messages/s over the provider's mps {MPS:g}, 3 s lease, 2 workers"),
            Figure("throttled.duplicates", "messages", dups, "<=", 0.0,
                   note="messages the provider got twice (must be 0)")]


async def trial(messages: int) -> tuple[float, int]:
    await fresh_database()
    key = await new_app_key()
    api_port, sink_port = free_port(), free_port()
    sink = HttpSink()
    await sink.start(sink_port)
    api = spawn("hub.cli.main", "api", HUB_API_PORT=str(api_port))
    workers = [spawn("hub.cli.main", "worker", HUB_LEASE_S="3") for _ in range(2)]
    url = f"http://127.0.0.1:{api_port}"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        with processes(api, *workers):
            wait_http(url + "/healthz")
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(url + "/v1/transports", data=json.dumps({
                    "name": "slow", "type": "api", "config": {
                        "url": sink.url + "/send", "mps": MPS, "body": {"to": "{{address}}"}}})) as r:
                    assert r.status == 201, await r.text()
                audience = [f"+9779813{i:06d}" for i in range(messages)]
                body = {"transport": {"type": "api", "message": "Hi"}, "audience": audience}
                session, elapsed = await run_session(http, url, body, poll_s=0.2)
    finally:
        await sink.stop()
    got = collections.Counter(s.body["to"] for s in sink.seen)
    duplicates = sum(n - 1 for n in got.values())
    assert set(got) == set(audience), "recipients lost"
    assert session["counts"] == {"delivered": messages}, session["counts"]
    rate = messages / elapsed
    print(f"(t) {messages} messages at mps {MPS:g}, 3 s lease, 2 workers: {rate:.1f} msg/s"
          f" (ratio to the contract {rate / MPS:.2f}); duplicates at the provider: {duplicates}"
          " (must be 0)")
    return rate, duplicates


if __name__ == "__main__":
    cli(main, __doc__)
