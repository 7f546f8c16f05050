"""Voice ceiling (issue 12 part 1). Needs the embedded Asterisk and SIPp.

A sweep of offered rates: 50, 100, 200, 500 calls per second (the top ones well above
what this machine's Asterisk can take). At each step, the same number of calls (the rate
× SECONDS_PER_STEP) is offered to:
- raw: an ARI loop doing the hub's work for a plain broadcast call — originate into its
  own Stasis app, play the same prepared file, hang up on PlaybackFinished — call i not
  before i/rate s, with 1 and with 8 originates in flight;
- hub: one immediate voice session with `cps` = the rate, channels not binding.
An observer on the ARI websocket timestamps every channel for both.

Per run: channels created/s and answered/s (first to last), setup p50/p99 (created → Up),
failed originates; for the hub also the recording lag p50/p99 (ChannelDestroyed → the
attempt recorded in the database); and for both, the CPU milliseconds each process group
spent per call (`bench.cpu`: Asterisk, controller, PostgreSQL, ..., `bench` being the
raw loop with the observer, or the observer alone). Target: at every step the hub ≥ 0.9×
the better of the two raw loops at that step (created/s and answered/s).

    python -m bench.voice_unpaced [--quick] [--trials N]
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Options, cli
from bench.cpu import CpuMeter
from bench.results import Figure
from bench.voice_common import (
    AUTH,
    Hub,
    MediaServer,
    Observer,
    RawApp,
    asterisk,
    number,
    originate_raw,
    pct,
    phones,
)

SWEEP = (50, 100, 200, 500)
QUICK_SWEEP = (20,)
IN_FLIGHT = (1, 8)
SECONDS_PER_STEP = 5  # each run places cps × this many calls (at least CALLS_MIN)
CALLS_MIN = 200
QUICK_CALLS = 20
TONE_S = 1
CPU_GROUPS = {"asterisk": "asterisk -F", "controller": "hub.cli.main voice",
              "api": "hub.cli.main api", "postgres": "postgres", "redis": "redis-server",
              "sipp": "sipp "}


async def raw_run(ari: aiohttp.ClientSession, obs: Observer, media: str, calls: int,
                  in_flight: int, cps: float, first: int) -> dict[str, Any]:
    app = RawApp(ari, media)
    await app.start()
    obs.reset()
    meter = CpuMeter(CPU_GROUPS)
    try:
        failed = await originate_raw(ari, [number(first + i) for i in range(calls)],
                                     in_flight, cps)
        deadline = time.monotonic() + 60 + calls / 10
        while app.finished + failed < calls and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        app.stop()
    return {**obs.stats("raw-"), "failedOriginates": failed, "inFlight": in_flight, "cps": cps,
            "unfinished": calls - app.finished - failed,  # not ended by the deadline
            "cpuMsPerCall": meter.per_unit_ms(calls)}


async def hub_run(http: aiohttp.ClientSession, hub: Hub, obs: Observer, file_url: str,
                  calls: int, cps: float, first: int) -> dict[str, Any]:
    obs.reset()
    meter = CpuMeter(CPU_GROUPS)
    sid = await hub.campaign(http, [number(first + i) for i in range(calls)], file_url,
                             cps=cps, channels=1000)
    done = await hub.wait(http, sid, 120 + calls / 5)
    cpu = meter.per_unit_ms(calls)
    await asyncio.sleep(1)  # the last recordings
    lags = await hub.recording_lags_ms(sid, obs.ended_wall)
    failed = sum(v for k, v in done["counts"].items() if k != "delivered")
    return {**obs.stats("hub-"), "failedCalls": failed, "cps": cps,
            "unfinished": calls - sum(done["counts"].values()),  # not final by the deadline
            "recordingLagP50Ms": pct(lags, 0.5), "recordingLagP99Ms": pct(lags, 0.99),
            "cpuMsPerCall": cpu}


async def main(opts: Options) -> list[Figure]:
    sweep = opts.pick(SWEEP, QUICK_SWEEP)
    work = Path(tempfile.mkdtemp(prefix="hub-bench-unpaced-"))
    media = MediaServer(work)
    file_url = media.tone(TONE_S)
    hub = Hub()
    raw: dict[tuple[float, int], list[dict[str, Any]]] = {
        (c, k): [] for c in sweep for k in IN_FLIGHT}
    runs: dict[float, list[dict[str, Any]]] = {c: [] for c in sweep}
    first = 0
    try:
        with asterisk():
            await hub.start()
            async with phones(work), aiohttp.ClientSession(headers=AUTH) as ari, \
                    aiohttp.ClientSession() as http:
                obs = Observer()
                await obs.start(ari)
                # One hub call prepares the file; the raw loop then plays that very sound.
                warm = await hub.campaign(http, [number(999_999)], file_url, cps=10, channels=1)
                await hub.wait(http, warm, 60)
                sound = await hub.media_uri(warm)
                for _ in range(opts.trials):
                    for cps in sweep:
                        calls = opts.pick(max(CALLS_MIN, int(cps * SECONDS_PER_STEP)), QUICK_CALLS)
                        for k in IN_FLIGHT:
                            got = await raw_run(ari, obs, sound, calls, k, cps, first)
                            raw[(cps, k)].append(got)
                            first += calls
                            print(f"  raw, cps {cps}, {k} in flight: {got}", flush=True)
                        runs[cps].append(await hub_run(http, hub, obs, file_url, calls, cps,
                                                       first))
                        first += calls
                        print(f"  hub, cps {cps}: {runs[cps][-1]}", flush=True)
    finally:
        hub.stop()
        media.stop()
    figures = []
    for cps, rs in runs.items():
        best = max(IN_FLIGHT, key=lambda k: statistics.median(
            r["createdPerS"] for r in raw[(cps, k)]))
        base = raw[(cps, best)]
        for k in IN_FLIGHT:
            figures.append(Figure(
                f"voice.raw.created_per_s@cps{cps:g}.inflight{k}", "calls/s",
                [r["createdPerS"] for r in raw[(cps, k)]], ">=", None,
                extra={"answeredPerS": [r["answeredPerS"] for r in raw[(cps, k)]],
                       "setupP50Ms": [r["setupP50Ms"] for r in raw[(cps, k)]],
                       "setupP99Ms": [r["setupP99Ms"] for r in raw[(cps, k)]],
                       "failedOriginates": [r["failedOriginates"] for r in raw[(cps, k)]],
                       "unfinished": [r["unfinished"] for r in raw[(cps, k)]],
                       "cpuMsPerCall": [r["cpuMsPerCall"] for r in raw[(cps, k)]]},
                note="informational: a baseline of the voice ceiling"))
        for what in ("createdPerS", "answeredPerS"):
            figures.append(Figure(
                f"voice.unpaced.{what}@cps{cps:g}", "calls/s", [r[what] for r in rs], ">=", 0.9,
                baseline=[r[what] for r in base], on_ratio=True,
                extra={"setupP50Ms": [r["setupP50Ms"] for r in rs],
                       "setupP99Ms": [r["setupP99Ms"] for r in rs],
                       "failedCalls": [r["failedCalls"] for r in rs],
                       "unfinished": [r["unfinished"] for r in rs],
                       "recordingLagP50Ms": [r["recordingLagP50Ms"] for r in rs],
                       "recordingLagP99Ms": [r["recordingLagP99Ms"] for r in rs],
                       "cpuMsPerCall": [r["cpuMsPerCall"] for r in rs],
                       "baselineCpuMsPerCall": [r["cpuMsPerCall"] for r in base],
                       "baselineInFlight": best},
                note=f"hub offered {cps:g} calls/s vs the better raw ARI loop offered the"
                     f" same ({best} in flight)"))
    return figures


if __name__ == "__main__":
    cli(main, __doc__)
