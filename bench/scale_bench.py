"""Scale and memory (issue 12 part 5).

A scale curve: one immediate email session of 1,000, 10,000 and 100,000 recipients,
delivered by 1, 2 and 4 `hub worker` processes (started fresh for each point) to a
counting SMTP sink process. Per point: throughput (recipients / (endedAt − createdAt))
and the delivery latency p50/p90/p99, computed in SQL from the attempts (each delivered
attempt's end − the session's creation). Every delivery must be delivered once.

Memory: the peak RSS (VmHWM, the high-water mark, not what is left afterwards) of the
worker(s) over each point, so the 100,000-recipient × 1 worker point is a worker's peak
over a 100k email session. (The API's peak under 4 concurrent 100k posts is in
api_bench; the voice controller's at its capacity in voice_capacity.)

    python -m bench.scale_bench [--quick] [--trials N]
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg

from bench import common
from bench.results import Figure
from hub.dev.procs import stop_all

AUDIENCES = (1_000, 10_000, 100_000)
QUICK_AUDIENCES = (200, 1_000)
WORKERS = (1, 2, 4)
QUICK_WORKERS = (1, 2)
WORKER_RSS_TARGET_MB = 300.0

LATENCY_SQL = """
SELECT count(*) AS delivered,
       extract(epoch FROM s.ended_at - s.created_at) AS elapsed,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM a.ended_at - s.created_at)) AS pcts
FROM sessions s
JOIN deliveries d ON d.session_id = s.id
JOIN attempts a ON a.delivery_id = d.id AND a.outcome = 'delivered'
WHERE s.id = $1
GROUP BY s.ended_at, s.created_at
"""


async def point(http: aiohttp.ClientSession, url: str, size: int, workers: int,
                trial: int) -> dict[str, Any]:
    procs = [common.spawn("hub.cli.main", "worker") for _ in range(workers)]
    try:
        await asyncio.sleep(1.0)  # the workers are up before the session is
        body = {"transport": {"type": "email", "subject": "Scale", "message": "Hello"},
                "audience": [f"s{trial}-{workers}-{i}@example.com" for i in range(size)],
                "options": {"trigger": "immediate"}}
        sid = await common.deliver_all(http, url, body, size, poll_s=0.2)
        conn = await asyncpg.connect(common.DB_URL)
        try:
            row = await conn.fetchrow(LATENCY_SQL, sid)
        finally:
            await conn.close()
        peak = max(common.peak_rss_mb(p.pid) for p in procs)
    finally:
        stop_all(procs)
    assert row["delivered"] == size, f"{row['delivered']} delivered attempts for {size}"
    p50, p90, p99 = row["pcts"]
    return {"rate": size / float(row["elapsed"]), "p50": p50, "p90": p90, "p99": p99,
            "peakRssMb": peak}


async def main(opts: common.Options) -> list[Figure]:
    audiences = opts.pick(AUDIENCES, QUICK_AUDIENCES)
    worker_counts = opts.pick(WORKERS, QUICK_WORKERS)
    await common.fresh_database()
    key = await common.new_app_key()
    api_port, smtp_port, stats_port = common.free_port(), common.free_port(), common.free_port()
    url = f"http://127.0.0.1:{api_port}"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    results: dict[tuple[int, int], list[dict[str, Any]]] = {}
    with common.processes(common.spawn("hub.cli.main", "api", HUB_API_PORT=str(api_port)),
                   common.spawn("bench.smtp_sink", str(smtp_port), str(stats_port))):
        common.wait_http(url + "/healthz")
        common.wait_http(f"http://127.0.0.1:{stats_port}/_count")
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            await common.add_email_transport(http, url, smtp_port, max_connections=20)
            for trial in range(opts.trials):
                for size in audiences:
                    for workers in worker_counts:
                        got = await point(http, url, size, workers, trial)
                        results.setdefault((size, workers), []).append(got)
                        print(f"  {size:,} recipients x {workers} worker(s): {got}", flush=True)
    figures = []
    for (size, workers), runs in results.items():
        figures.append(Figure(
            f"scale.throughput.{size}x{workers}w", "msg/s", [r["rate"] for r in runs], ">=", None,
            extra={"latencyP50S": [r["p50"] for r in runs], "latencyP90S": [r["p90"] for r in runs],
                   "latencyP99S": [r["p99"] for r in runs]},
            note="informational: a point of the scale curve; latencies from submission to each"
                 " delivered attempt, in SQL"))
        figures.append(Figure(
            f"scale.latency_p99.{size}x{workers}w", "s", [r["p99"] for r in runs], "<=",
            None, note="informational"))
        figures.append(Figure(
            f"scale.worker_peak_rss.{size}x{workers}w", "MB", [r["peakRssMb"] for r in runs],
            "<=", WORKER_RSS_TARGET_MB, note="VmHWM of the largest worker over the session"))
    return figures


if __name__ == "__main__":
    common.cli(main, __doc__)
