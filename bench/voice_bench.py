"""Voice pacing and channel cap. Needs the embedded Asterisk and SIPp.

The hub paced at `cps` must place calls at that rate (within 5 %) and never hold more
channels than `maxChannels`. (The voice ceiling is voice_unpaced; capacity at the phones,
controller CPU and peak memory are voice_capacity.)

    python -m bench.voice_bench [--quick] [--trials N]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import aiohttp

from bench.common import Options, cli
from bench.results import Figure
from bench.voice_common import AUTH, Hub, MediaServer, Observer, asterisk, number, phones

RATE_CPS = 50
CALLS = 200
CAP = 20
CAPPED_CALLS = 100


async def main(opts: Options) -> list[Figure]:
    calls, capped_calls = opts.pick((CALLS, CAPPED_CALLS), (20, 10))
    rate, cap = opts.pick((RATE_CPS, CAP), (10, 3))
    work = Path(tempfile.mkdtemp(prefix="hub-bench-voice-"))
    media = MediaServer(work)
    hub = Hub()
    errors: list[float] = []
    caps: list[float] = []
    first = 0
    try:
        with asterisk():
            await hub.start()
            async with phones(work), aiohttp.ClientSession(headers=AUTH) as ari, \
                    aiohttp.ClientSession() as http:
                obs = Observer()
                await obs.start(ari)
                for _ in range(opts.trials):
                    obs.reset()
                    sid = await hub.campaign(http, [number(first + i) for i in range(calls)],
                                             media.tone(1), cps=rate, channels=1000)
                    first += calls
                    await hub.wait(http, sid, 120)
                    achieved = obs.stats("hub-")["createdPerS"]
                    errors.append(100 * abs(achieved - rate) / rate)
                    obs.reset()
                    sid = await hub.campaign(
                        http, [number(first + i) for i in range(capped_calls)], media.tone(2),
                        cps=rate, channels=cap)
                    first += capped_calls
                    await hub.wait(http, sid, 120)
                    caps.append(obs.max_live)
    finally:
        hub.stop()
        media.stop()
    return [Figure("voice.pacing_error", "%", errors, "<=", 5.0,
                   note=f"|achieved − configured| / configured at {rate} cps, {calls} calls"),
            Figure("voice.cap_max_live", "channels", caps, "<=", float(cap),
                   note=f"most channels live at once with maxChannels {cap}")]


if __name__ == "__main__":
    cli(main, __doc__)
