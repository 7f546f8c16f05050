"""Capacity at the phones (issue 12 part 2). Needs the embedded Asterisk and SIPp.

A ramp of simultaneous answered calls with playback — 300, 600, 1,200, 2,400 — for a raw
ARI loop and for the hub, each stopping at its first failing step. A step is judged at
the phones, not from Asterisk: SIPp's own statistics (`-trace_stat`: the most calls up
at once, failed calls) and the RTP audio the phones received (streams that got packets
during the hold). A step passes when SIPp saw every call up at once with no failed call
and every call's audio arrived. For the hub the voice controller's CPU share and peak RSS
(VmHWM, reset before each step) are reported at each step; the figures "at capacity" are
those of each trial's highest passing step. The raw and hub ramps take turns going first.

Target: the hub's highest passing step ≥ 0.9× the raw loop's.

    python -m bench.voice_capacity [--quick] [--trials N]

The phones need file descriptors: run under `ulimit -n 65536`. The RTP counter is one
Python socket; past ~2,000 streams (100,000 packets/s) check `rtpStreams` against
`maxCurrentCalls` before blaming the hub.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Options, cli, cpu_s, peak_rss_mb, reset_peak_rss
from bench.results import Figure
from bench.voice_common import (
    ARI,
    AUTH,
    Hub,
    MediaServer,
    Observer,
    RawApp,
    asterisk,
    number,
    originate_raw,
    phones,
    sipp_stats,
)

RAMP = (300, 600, 1200, 2400)
QUICK_RAMP = (5, 10)
HOLD_TONE_S = 60     # every call plays this long: all of a step are up together
SETTLE_S = 5         # after the last answer, how long all must stay up (RTP counted)
HUB_CPS = 200
QUIET_TIMEOUT_S = 60.0  # after a step, how long Asterisk gets to be rid of its channels


def judge(calls: int, sipp: dict[str, int], streams: int, max_up: int) -> bool:
    return sipp["maxCurrentCalls"] >= calls and sipp["failed"] == 0 and streams >= calls \
        and max_up >= calls


async def hang_up_all(ari: aiohttp.ClientSession, timeout_s: float = QUIET_TIMEOUT_S) -> int:
    """Hang up every channel, again each second until Asterisk has none left (a step
    must not start with the previous step's calls still tearing down); the channels
    still there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with ari.get(f"{ARI}/channels") as r:
            channels = await r.json()
        if not channels or time.monotonic() > deadline:
            return len(channels)
        for ch in channels:
            async with ari.delete(f"{ARI}/channels/{ch['id']}") as r:
                await r.read()
        await asyncio.sleep(1.0)


async def until_up(obs: Observer, calls: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while obs.live_up < calls and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def step(kind: str, calls: int, work: Path, ari: aiohttp.ClientSession, obs: Observer,
               start_call: Any, hub: Hub | None) -> dict[str, Any]:
    stats_file = work / f"sipp-{kind}-{calls}-{time.time():.0f}.csv"
    async with phones(work, stats_file) as rtp:
        obs.reset()
        if hub:
            reset_peak_rss(hub.voice_pid)  # this step's peak, not the process's so far
        cpu0, t0 = (cpu_s(hub.voice_pid), time.monotonic()) if hub else (0.0, time.monotonic())
        sid = await start_call()
        await until_up(obs, calls, 60 + calls / 20)
        hold_from = time.monotonic()
        await asyncio.sleep(SETTLE_S)
        streams = sum(1 for times in rtp.streams.values()
                      if any(t >= hold_from for t in times))
        out: dict[str, Any] = {"calls": calls, "maxUp": obs.max_up, "rtpStreams": streams}
        if hub:
            out["controllerCpuPct"] = 100 * (cpu_s(hub.voice_pid) - cpu0) / (time.monotonic() - t0)
            out["controllerPeakRssMb"] = peak_rss_mb(hub.voice_pid)
        if hub and sid:  # no retry of what we hang up may leak into the next step
            async with aiohttp.ClientSession() as http:
                await hub.cancel(http, sid)
        left = await hang_up_all(ari)
        if left:
            print(f"  {kind} {calls}: {left} channels still up after {QUIET_TIMEOUT_S:g} s",
                  flush=True)
    out.update(sipp_stats(stats_file))
    out["passed"] = judge(calls, out, streams, obs.max_up)
    print(f"  {kind} {calls}: {out}", flush=True)
    return out


async def ramp(kind: str, steps: tuple[int, ...], work: Path, ari: aiohttp.ClientSession,
               http: aiohttp.ClientSession, obs: Observer, hub: Hub, file_url: str,
               sound: str) -> tuple[int, list[dict[str, Any]]]:
    held, seen, first = 0, [], 0
    for calls in steps:
        numbers = [number(500_000 + first + i) for i in range(calls)]
        first += calls
        if kind == "raw":
            app = RawApp(ari, sound, hang_up=False)
            await app.start()

            async def start_raw(numbers: list[str] = numbers) -> str | None:
                await originate_raw(ari, numbers, 8)
                return None

            try:
                result = await step(kind, calls, work, ari, obs, start_raw, None)
            finally:
                app.stop()
        else:
            async def start_hub(numbers: list[str] = numbers, calls: int = calls) -> str | None:
                return await hub.campaign(http, numbers, file_url, cps=HUB_CPS, channels=calls)

            result = await step(kind, calls, work, ari, obs, start_hub, hub)
        seen.append(result)
        if not result["passed"]:
            break
        held = calls
    return held, seen


async def main(opts: Options) -> list[Figure]:
    steps = opts.pick(RAMP, QUICK_RAMP)
    work = Path(tempfile.mkdtemp(prefix="hub-bench-capacity-"))
    media = MediaServer(work)
    file_url = media.tone(opts.pick(HOLD_TONE_S, 20))
    hub = Hub()
    raw_held: list[float] = []
    hub_held: list[float] = []
    trials: list[dict[str, Any]] = []
    try:
        with asterisk():
            await hub.start()
            async with aiohttp.ClientSession(headers=AUTH) as ari, aiohttp.ClientSession() as http:
                obs = Observer()
                await obs.start(ari)
                async with phones(work):
                    # the hold tone, prepared by the hub once, played by both
                    probe = await hub.campaign(http, [number(999_998)], file_url, cps=10,
                                               channels=1)
                    sound = await hub.media_uri(probe)
                    await asyncio.sleep(2)
                    await hub.cancel(http, probe)
                    await hang_up_all(ari)
                for trial in range(opts.trials):
                    # Whichever ramps second inherits what the first left (SIPp, Asterisk):
                    # the order alternates so that neither always does.
                    order = ("raw", "hub") if trial % 2 == 0 else ("hub", "raw")
                    ramps: dict[str, list[dict[str, Any]]] = {}
                    for kind in order:
                        got, ramps[kind] = await ramp(kind, steps, work, ari, http, obs, hub,
                                                      file_url, sound)
                        (raw_held if kind == "raw" else hub_held).append(got)
                    trials.append({"first": order[0], "rawSteps": ramps["raw"],
                                   "hubSteps": ramps["hub"]})
    finally:
        hub.stop()
        media.stop()
    at_capacity = [capacity_step(t["hubSteps"]) for t in trials]
    return [
        Figure("voice.capacity.held", "calls", hub_held, ">=", 0.9, baseline=raw_held,
               on_ratio=True, extra={"steps": list(steps), "ramps": trials,
                                     "nofile": os.sysconf("SC_OPEN_MAX")},
               note="highest step of simultaneous answered calls with playback passing at the"
                    " phones (SIPp statistics + RTP); raw ARI loop as baseline; the order of"
                    " the two ramps alternates by trial"),
        Figure("voice.controller.peak_rss_at_capacity", "MB",
               [s.get("controllerPeakRssMb", 0.0) for s in at_capacity], "<=", 200.0,
               note="VmHWM of the voice controller during its highest passing step (reset"
                    " before each step), per trial"),
        Figure("voice.controller.cpu_at_capacity", "%",
               [s.get("controllerCpuPct", 0.0) for s in at_capacity], "<=", 100.0,
               extra={"perStep": [[s.get("controllerCpuPct", 0.0) for s in t["hubSteps"]]
                                  for t in trials]},
               note="controller CPU share during its highest passing step (one core = 100 %),"
                    " per trial"),
    ]


def capacity_step(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest step that passed (the first step when none did)."""
    passed = [s for s in steps if s["passed"]]
    return passed[-1] if passed else steps[0]


if __name__ == "__main__":
    cli(main, __doc__)
