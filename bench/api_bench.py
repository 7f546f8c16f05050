"""API benchmarks (issue 12 parts 4 and 5).

(a) Small instructions, open loop: `bench.loadgen` (its own process) offers POST
    /v1/sessions at fixed rates (RATES, 30 s each after a 5 s warm-up), each
    an immediate email session of 2 recipients with `webhookUrl` set, half of them with an
    Idempotency-Key, sent to `hub api` (one process; `--api-processes N` runs it with
    HUB_API_PROCESSES=N and names its figures `api.pN.*`), while a `hub worker` delivers them
    (to an SMTP sink process) and the webhooks go to a sink process. After each hub trial
    the worker gets at most DRAIN_CAP_S to catch up; what it has not delivered by then it
    goes on delivering during the next hub trials (the sessions still open when each trial starts are
    reported as `backlog`). Reported per rate: achieved rate, p50/p99 latency (from when
    each request was due), errors. Baseline: `bench.baseline_api` (aiohttp + asyncpg, one
    INSERT per request, its own process) under the same generator, with the hub's worker
    paused (SIGSTOP) so that the baseline has the machine the hub's API would have alone.
    Sustained rate (per trial) = the highest offered rate answered at ≥ 95 % with no
    error and p99 ≤ 500 ms. Targets: ≥ 3× the 1,013 req/s measured before (closed loop), p99 ≤ 50 ms at
    1,000 req/s.
(b) POST /v1/sessions with a 100,000-recipient audience: time to 201; baseline: a raw
    asyncpg COPY of the same rows into an empty table shaped like `deliveries`. Sent to a
    `hub api` of one process (started after (a)).
(c) Peak RSS (VmHWM) of a fresh one-process `hub api` while 4 such posts run at once,
    one fresh process per trial.

    python -m bench.api_bench [--quick] [--trials N] [--rates 250,500,...] [--api-processes N]

    (offered: 250, 500, 1,000 and 2,000 req/s, 30 s each after a 5 s warm-up)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    DB_URL,
    ROOT,
    Options,
    add_email_transport,
    env,
    finish,
    free_port,
    fresh_database,
    median,
    new_app_key,
    options,
    peak_rss_mb,
    processes,
    spawn,
    wait_http,
)
from bench.results import Figure

BIG = 100_000
TODAY_RPS = 1013.0  # small instructions before issue 12 (3 s closed loop, README)
RATES = (250, 500, 1000, 2000)
DRAIN_CAP_S = 30.0
QUICK_RATES = (50, 100)
SUSTAINED_SHARE = 0.95
SUSTAINED_P99_MS = 500.0


def instruction(audience: list[str], trigger: str = "manual") -> dict[str, object]:
    return {"transport": {"type": "email", "subject": "Bench", "message": "Hello"},
            "audience": audience, "options": {"trigger": trigger}}


async def loadgen(url: str, key: str, rate: float, opts: Options, webhook: str | None
                  ) -> dict[str, Any]:
    seconds, warmup = opts.pick((30.0, 5.0), (2.0, 1.0))
    args = [sys.executable, "-m", "bench.loadgen", "--url", url, "--key", key,
            "--rate", str(rate), "--seconds", str(seconds), "--warmup", str(warmup),
            "--warmup-rate", str(min(rate, 250))]
    if webhook:
        args += ["--webhook", webhook]
    out = await asyncio.to_thread(subprocess.run, args, cwd=ROOT, env=env(), capture_output=True,
                                  text=True, timeout=seconds + warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def backlog(db: asyncpg.Connection) -> int:
    """Sessions the worker has not finished (queued or running)."""
    open_: int = await db.fetchval(
        "SELECT count(*) FROM sessions WHERE status IN ('queued', 'running')")
    return open_


async def drained(db: asyncpg.Connection, timeout_s: float) -> float:
    """Seconds until no session is queued or running (the worker caught up), at most
    `timeout_s`."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s and await backlog(db):
        await asyncio.sleep(1.0)
    return time.perf_counter() - start


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block, then continued."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def sustained(steps: dict[float, list[dict[str, Any]]], trial: int) -> float:
    """The highest rate this trial sustained (answered ≥ 95 %, no error, p99 ≤ 500 ms)."""
    best = 0.0
    for rate, runs in sorted(steps.items()):
        r = runs[trial]
        if (r["achieved"] >= SUSTAINED_SHARE * rate and r["errorCount"] == 0
                and (r["p99Ms"] or 1e9) <= SUSTAINED_P99_MS):
            best = rate
    return best


async def open_loop(url: str, key: str, base_url: str, webhook: str, opts: Options,
                    rates: tuple[float, ...], worker: int, prefix: str) -> list[Figure]:
    hub: dict[float, list[dict[str, Any]]] = {}
    raw: dict[float, list[dict[str, Any]]] = {}
    backlogs: dict[float, list[int]] = {}
    figures = []
    db = await asyncpg.connect(DB_URL)
    for rate in rates:
        for _ in range(opts.trials):
            with paused(worker):
                raw.setdefault(rate, []).append(await loadgen(base_url, "none", rate, opts,
                                                              None))
            backlogs.setdefault(rate, []).append(await backlog(db))
            hub.setdefault(rate, []).append(await loadgen(url + "/v1/sessions", key, rate, opts,
                                                          webhook))
            await drained(db, opts.pick(DRAIN_CAP_S, 10.0))
        h, b = hub[rate], raw[rate]
        print(f"  {rate:g} req/s offered: hub {[r['achieved'] for r in h]} achieved,"
              f" p99 {[r['p99Ms'] for r in h]} ms, errors {[r['errorCount'] for r in h]},"
              f" backlog {backlogs[rate]}; baseline {[r['achieved'] for r in b]},"
              f" p99 {[r['p99Ms'] for r in b]} ms", flush=True)
        detail = {"offered": rate, "errors": [r["errorCount"] for r in h],
                  "backlog": backlogs[rate],
                  "p50Ms": median([r["p50Ms"] or 0 for r in h]),
                  "baselineP99Ms": median([r["p99Ms"] or 0 for r in b]),
                  "baselineErrors": [r["errorCount"] for r in b],
                  "lagMaxMs": max(r["lagMaxMs"] for r in h + b)}
        figures.append(Figure(f"{prefix}.small.achieved@{rate:g}", "req/s",
                              [r["achieved"] for r in h], ">=", SUSTAINED_SHARE * rate,
                              baseline=[r["achieved"] for r in b], extra=detail))
        figures.append(Figure(f"{prefix}.small.p99@{rate:g}", "ms", [r["p99Ms"] or 1e9 for r in h],
                              "<=", 50.0 if rate <= 1000 else SUSTAINED_P99_MS,
                              baseline=[r["p99Ms"] or 1e9 for r in b]))
    await db.close()
    figures.insert(0, Figure(
        f"{prefix}.small.sustained", "req/s", [sustained(hub, t) for t in range(opts.trials)],
        ">=", 3 * TODAY_RPS, baseline=[sustained(raw, t) for t in range(opts.trials)],
        note=f"highest offered rate answered at >= {SUSTAINED_SHARE:.0%}, no error, p99 <="
             f" {SUSTAINED_P99_MS:g} ms; target 3x {TODAY_RPS:g} req/s (before issue 12)"))
    return figures


async def raw_copy_baseline(audience: list[str], trials: int) -> list[float]:
    conn = await asyncpg.connect(DB_URL)
    await conn.execute("DROP TABLE IF EXISTS bench_copy")
    await conn.execute("CREATE TABLE bench_copy (LIKE deliveries INCLUDING ALL)")
    times = []
    for _ in range(trials):
        await conn.execute("TRUNCATE bench_copy")
        sid = uuid.uuid4()
        start = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_copy", records=((sid, a, "pending", None) for a in audience),
            columns=["session_id", "address", "status", "next_attempt_at"])
        times.append(time.perf_counter() - start)
    await conn.execute("DROP TABLE bench_copy")
    await conn.close()
    return times


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Seconds to the 201 of one POST /v1/sessions."""
    start = time.perf_counter()
    async with http.post(url + "/v1/sessions", data=body) as r:
        assert r.status == 201, await r.text()
        await r.read()
    return time.perf_counter() - start


@contextmanager
def one_api() -> Iterator[tuple[str, int]]:
    """A fresh one-process `hub api`: (its URL, its pid)."""
    port = free_port()
    with processes(proc := spawn("hub.cli.main", "api", HUB_API_PORT=str(port))):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}", proc.pid


async def big_posts(key: str, size: int, opts: Options) -> list[Figure]:
    audience = [f"user{i}@example{i % 97}.com" for i in range(size)]
    body = json.dumps(instruction(audience)).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    times, peaks = [], []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        with one_api() as (url, _):
            for _ in range(opts.trials):
                times.append(await post(http, url, body))
        copy = await raw_copy_baseline(audience, opts.trials)
        for _ in range(opts.trials):  # the high-water mark only grows: a process per trial
            with one_api() as (url, pid):
                await asyncio.gather(*(post(http, url, body) for _ in range(4)))
                peaks.append(peak_rss_mb(pid))
    return [
        Figure(f"api.big.post_{size}", "s", times, "<=", 1.5, baseline=copy,
               note="time to 201; baseline: raw asyncpg COPY of the same rows"),
        Figure(f"api.big.peak_rss_4x{size}", "MB", peaks, "<=", 300.0,
               note="VmHWM of a fresh API process after 4 concurrent posts"),
    ]


async def main(opts: Options, rates: tuple[float, ...] | None = None,
               api_processes: int = 1) -> list[Figure]:
    rates = rates or opts.pick(RATES, QUICK_RATES)
    await fresh_database()
    key = await new_app_key()
    port, base_port, smtp_port, sink_port = free_port(), free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    procs = [spawn("hub.cli.main", "api", HUB_API_PORT=str(port),
                   HUB_API_PROCESSES=str(api_processes)),
             spawn("hub.cli.main", "worker"),
             spawn("hub.dev.smtp", str(smtp_port)),
             spawn("bench.sink", str(sink_port)),
             spawn("bench.baseline_api", str(base_port), DB_URL)]
    figures: list[Figure] = []
    with processes(*procs):
        for probe in (url, f"http://127.0.0.1:{base_port}", f"http://127.0.0.1:{sink_port}"):
            wait_http(probe + ("/_count" if probe.endswith(str(sink_port)) else "/healthz"))
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            await add_email_transport(http, url, smtp_port, headers)
        prefix = "api" if api_processes == 1 else f"api.p{api_processes}"
        figures += await open_loop(url, key, f"http://127.0.0.1:{base_port}/v1/sessions",
                                   f"http://127.0.0.1:{sink_port}/hook", opts, rates,
                                   procs[1].pid, prefix)
    if api_processes == 1:
        figures += await big_posts(key, opts.pick(BIG, 2_000), opts)
    return figures


def own_flag(argv: list[str], name: str) -> str | None:
    """This script's own `name VALUE` taken out of `argv` (the rest is `options`'s)."""
    if name not in argv:
        return None
    at = argv.index(name)
    value = argv[at + 1]
    del argv[at:at + 2]
    return value


if __name__ == "__main__":
    argv = sys.argv[1:]
    rates_arg, count_arg = own_flag(argv, "--rates"), own_flag(argv, "--api-processes")
    chosen = tuple(float(x) for x in rates_arg.split(",")) if rates_arg else None
    count = int(count_arg) if count_arg else 1
    opts = options(argv, __doc__)
    finish(asyncio.run(main(opts, chosen, count)), opts)
