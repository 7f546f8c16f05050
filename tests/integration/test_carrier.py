"""A carrier's limits on one PJSIP endpoint, on the real Redis (and PostgreSQL for the
limits registered by the apps), held together by several controllers: each `Carrier`
below has its own Redis connection, as two `hub voice` processes have."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from hub.store import grants
from hub.voice.carrier import Carrier, Limits, LimitsReader, take_turns
from tests.conftest import REDIS_URL
from tests.helpers import Api, free_port


@pytest.fixture
async def carriers() -> AsyncIterator[tuple[Carrier, Carrier]]:
    first, second = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    yield Carrier(first), Carrier(second)
    await first.aclose()
    await second.aclose()


def _endpoint() -> str:
    return f"trunk-{uuid.uuid4().hex[:8]}"


UNPACED = 1e9  # calls per second: the slot never binds
UNCAPPED = 10**9  # channels: the cap never binds


async def _take_call(carrier: Carrier, endpoint: str, channel: str, cap: int, cps: float,
                     max_wait_s: float | None, **lease: float) -> float | None:
    """One call's channel and slot (`take_calls` for one channel)."""
    return (await carrier.take_calls(endpoint, [channel], cap, cps, max_wait_s, **lease))[0]


async def _channel(carrier: Carrier, endpoint: str, channel: str, cap: int,
                   **lease: float) -> bool:
    """A call's channel under `cap` (its slot never in the way)."""
    return await _take_call(carrier, endpoint, channel, cap, UNPACED, None, **lease) is not None


async def test_two_controllers_never_hold_more_than_the_cap(
        carriers: tuple[Carrier, Carrier]) -> None:
    endpoint, cap = _endpoint(), 4
    live: set[str] = set()  # channels being "dialled": granted and not yet released
    most = grants = refusals = 0

    async def dialler(carrier: Carrier, until: float) -> None:
        nonlocal most, grants, refusals
        while time.monotonic() < until:
            channel = f"hub-{uuid.uuid4()}"
            if not await _channel(carrier, endpoint, channel, cap):
                refusals += 1
                await asyncio.sleep(0)
                continue
            grants += 1
            live.add(channel)
            most = max(most, len(live))
            await asyncio.sleep(random.uniform(0, 0.004))  # the call
            live.discard(channel)
            await carrier.release(endpoint, channel)

    async def observer(until: float) -> int:
        redis, seen = Redis.from_url(REDIS_URL), 0
        try:
            while time.monotonic() < until:
                seen = max(seen, await redis.zcard(f"hub:carrier:{endpoint}:channels"))
        finally:
            await redis.aclose()
        return seen

    until = time.monotonic() + 2.0
    *_, in_redis = await asyncio.gather(
        *(dialler(c, until) for c in carriers for _ in range(20)), observer(until))
    assert most == cap, most  # the cap is used in full, and never passed
    assert in_redis <= cap, in_redis
    assert grants > 100 and refusals > 0, (grants, refusals)
    assert await carriers[0].held(endpoint) == 0  # every channel given back


async def test_a_dead_controllers_channels_come_back_when_their_leases_run_out(
        carriers: tuple[Carrier, Carrier]) -> None:
    alive, dead = carriers
    endpoint = _endpoint()
    kept = [f"hub-kept-{i}" for i in range(2)]
    for channel in kept:
        assert await _channel(alive, endpoint, channel, 4, lease_s=0.6)
    for i in range(2):
        assert await _channel(dead, endpoint, f"hub-dead-{i}", 4, lease_s=0.6)
    assert not await _channel(alive, endpoint, "hub-new-0", 4)
    for _ in range(5):  # the live controller renews its calls; the dead one cannot
        await asyncio.sleep(0.25)
        assert await alive.renew(endpoint, kept, lease_s=0.6) == 0
    assert await alive.held(endpoint) == 2
    assert await _channel(alive, endpoint, "hub-new-0", 4)
    assert await _channel(alive, endpoint, "hub-new-1", 4)
    assert not await _channel(alive, endpoint, "hub-new-2", 4)


async def test_a_live_call_whose_lease_ran_out_is_counted_again(
        carriers: tuple[Carrier, Carrier]) -> None:
    carrier, _ = carriers
    endpoint = _endpoint()
    assert await _channel(carrier, endpoint, "hub-a", 1, lease_s=0.1)
    await asyncio.sleep(0.2)  # e.g. Redis was unreachable for longer than the lease
    assert await carrier.renew(endpoint, ["hub-a"]) == 1
    assert not await _channel(carrier, endpoint, "hub-b", 1)


async def test_a_call_takes_its_channel_and_slot_together_or_neither(
        carriers: tuple[Carrier, Carrier]) -> None:
    first, second = carriers
    endpoint = _endpoint()
    assert await _take_call(first, endpoint, "hub-a", 2, 1, max_wait_s=0.2) == 0  # at once
    # The next slot at 1 call/s is a second away: no slot, and no channel held for it.
    assert await _take_call(second, endpoint, "hub-b", 2, 1, max_wait_s=0.2) is None
    assert await first.held(endpoint) == 1
    wait_s = await _take_call(second, endpoint, "hub-b", 2, 1, max_wait_s=2)
    assert wait_s is not None and 0.7 <= wait_s <= 1.0, wait_s
    assert await first.held(endpoint) == 2
    # Full: refused, and no slot is spent (one spent would put hub-c's a second later).
    assert await _take_call(first, endpoint, "hub-c", 2, 1, max_wait_s=5) is None
    await first.release(endpoint, "hub-a")
    wait_c = await _take_call(first, endpoint, "hub-c", 2, 1, max_wait_s=5)
    assert wait_c is not None and 1.6 <= wait_c <= 2.0, wait_c  # the slot after hub-b's


async def test_calls_started_together_take_their_slots_in_one_round(
        carriers: tuple[Carrier, Carrier]) -> None:
    """Calls started together get what each would get alone, in turn, from one script:
    channels up to the cap (one another controller holds counts), slots 1/cps apart, and
    none past the horizon or the cap, which then hold neither a channel nor a slot."""
    first, second = carriers
    endpoint = _endpoint()
    assert await _channel(second, endpoint, "hub-other", 4)
    calls: list[tuple[Any, ...]] = []
    evalsha = first.redis.evalsha

    def counted(*args: Any) -> Any:  # the client library's call, counted
        calls.append(args)
        return evalsha(*args)

    first.redis.evalsha = counted  # type: ignore[method-assign]
    before = time.monotonic()
    waits = await first.take_calls(endpoint, ["hub-a", "hub-b", "hub-c", "hub-d"], 4, 10,
                                   max_wait_s=0.15)
    after = time.monotonic()
    assert len(calls) == 1
    assert waits[0] is not None and waits[1] is not None and waits[0] <= 0.01
    assert 0.08 <= waits[1] - waits[0] <= 0.11  # 10 calls/s: 0.1 s apart
    assert waits[2] is None  # its slot would be 0.2 s away: past the horizon
    assert waits[3] is None  # and it is refused too, no slot spent for it
    assert await first.held(endpoint) == 3
    # The two not taken hold nothing: the next slot is right after hub-b's, 0.2 s after
    # the first script ran (had either spent a slot, it would be 0.1 s later still).
    again = time.monotonic()
    waits = await first.take_calls(endpoint, ["hub-c", "hub-d"], 4, 10, max_wait_s=1)
    done = time.monotonic()
    assert waits[0] is not None, waits
    assert before + 0.2 - done - 0.01 <= waits[0] <= after + 0.2 - again + 0.01, waits
    assert waits[1] is None  # the cap: hub-other, hub-a, hub-b, hub-c hold all four
    assert await second.held(endpoint) == 4


async def test_channels_given_back_together_are_all_free(
        carriers: tuple[Carrier, Carrier]) -> None:
    """Releases arriving together go to Redis as one call per endpoint: every one of
    them, on every endpoint, is free again when its `release` returns."""
    first, second = carriers
    one, two = _endpoint(), _endpoint()
    for endpoint in (one, two):
        for i in range(5):
            assert await _channel(first, endpoint, f"hub-{i}", 5)
        assert not await _channel(second, endpoint, "hub-late", 5)  # full
    zrems: list[tuple[Any, ...]] = []
    zrem = first.redis.zrem

    def counted(*args: Any) -> Any:  # the client library's call, counted
        zrems.append(args)
        return zrem(*args)

    first.redis.zrem = counted  # type: ignore[method-assign, assignment]
    await asyncio.gather(*(first.release(endpoint, f"hub-{i}")
                           for endpoint in (one, two) for i in range(4)))
    assert len(zrems) == 2  # one per endpoint, not eight
    assert await second.held(one) == await second.held(two) == 1
    assert await _channel(second, one, "hub-late", 2)
    assert not await _channel(second, one, "hub-later", 2)


async def test_scripts_are_loaded_again_after_redis_forgets_them(
        carriers: tuple[Carrier, Carrier], redis: Any) -> None:
    carrier, _ = carriers
    endpoint = _endpoint()
    assert await _take_call(carrier, endpoint, "hub-a", 1, 100, max_wait_s=1) is not None
    redis.script_flush()  # as after a Redis restart
    assert await _take_call(carrier, endpoint, "hub-b", 2, 100, max_wait_s=1) is not None
    assert await carrier.held(endpoint) == 2


async def _slots(carrier: Carrier, endpoint: str, cps: Any, until: float) -> list[float]:
    stamps: list[float] = []
    while time.monotonic() < until:
        wait_s = await _take_call(carrier, endpoint, f"hub-{uuid.uuid4()}", UNCAPPED,
                                         cps() if callable(cps) else cps, None)
        assert wait_s is not None
        await asyncio.sleep(wait_s)
        stamps.append(time.monotonic())
    return stamps


@pytest.mark.timeout(30)
async def test_two_controllers_share_one_endpoints_calls_per_second(
        carriers: tuple[Carrier, Carrier]) -> None:
    endpoint = _endpoint()
    until = time.monotonic() + 5.0
    got = await asyncio.gather(*(_slots(c, endpoint, 2, until) for c in carriers for _ in range(3)))
    stamps = sorted(s for one in got for s in one)
    assert all(got[0::3]) and all(got[1::3]), "both controllers placed calls"
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert abs(rate - 2) <= 0.1, (rate, stamps)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps) >= 0.5 - 0.03, gaps


async def test_a_changed_cps_applies_to_the_next_call(carriers: tuple[Carrier, Carrier]) -> None:
    endpoint, cps = _endpoint(), [20.0]
    start = time.monotonic()
    task = asyncio.gather(*(_slots(c, endpoint, lambda: cps[0], start + 2.0) for c in carriers))
    await asyncio.sleep(1.0)
    cps[0] = 4.0  # PATCHed: the dialler passes the fresh limit on its next call
    stamps = sorted(s - start for one in await task for s in one)
    early = [s for s in stamps if s < 0.9]
    late = [s for s in stamps if 1.3 < s < 2.0]
    assert 16 <= len(early) <= 20, early  # 20 per second
    assert 2 <= len(late) <= 3, late  # 4 per second from about 1.0 s


async def test_redis_away_or_slow_means_not_now() -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = silent.sockets[0].getsockname()[1]
    for url in (f"redis://127.0.0.1:{free_port()}/0", f"redis://127.0.0.1:{port}/0"):
        redis = Redis.from_url(url)
        carrier = Carrier(redis, timeout_s=0.3)
        began = time.monotonic()
        assert not await _channel(carrier, "trunk", "hub-x", 10)
        assert await _take_call(carrier, "trunk", "hub-x", 10, 5, None) is None
        assert await _take_call(carrier, "trunk", "hub-x", 10, 5, 1) is None
        assert await carrier.renew("trunk", ["hub-x"]) is None
        assert await carrier.held("trunk") is None
        await carrier.release("trunk", "hub-x")  # no error: the lease runs out by itself
        assert time.monotonic() - began < 3.0
        await redis.aclose()
    silent.close()


async def test_sessions_sharing_an_endpoint_take_turns(carriers: tuple[Carrier, Carrier]) -> None:
    endpoint = _endpoint()
    a, b, c = (uuid.UUID(int=i) for i in (1, 2, 3))
    picks = [await carriers[i % 2].next_session(endpoint, [c, a, b]) for i in range(6)]
    assert picks == [a, b, c, a, b, c]  # across both controllers
    assert await carriers[0].next_session(endpoint, []) is None
    batch = [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("B", 2), ("C", 1)]
    assert take_turns(batch, lambda item: item[0]) == [
        ("A", 1), ("B", 1), ("C", 1), ("A", 2), ("B", 2), ("A", 3)]


async def test_trunk_problems_are_kept_for_hub_trunks(carriers: tuple[Carrier, Carrier]) -> None:
    endpoint = _endpoint()
    assert await carriers[0].last_problem(endpoint) is None
    await carriers[0].note_problem(endpoint, 403, "the trunk refused the call: SIP 403")
    problem = await carriers[1].last_problem(endpoint)
    assert problem is not None and problem["sipCode"] == 403 and "403" in problem["note"]


async def test_limits_are_the_smallest_of_every_app_on_the_endpoint(
        api: Api, make_app: Any, db: asyncpg.Pool) -> None:
    other = Api(api.http, api.base, await make_app("other"))
    for client, trunk in ((api, "shared"), (other, "shared"), (api, "other")):
        await grants.grant(db, uuid.UUID(str(client.app.app_id)), trunk)  # operator's grants
    ids = []
    for client, cps, channels in ((api, 5, 10), (other, 2, 30)):
        status, body = await client.post("/v1/transports", {"name": "sip", "type": "voice",
                                                            "config": {"trunk": "shared", "cps": cps,
                                                                       "maxChannels": channels}})
        assert status == 201, body
        ids.append(body["id"])
    status, _ = await api.post("/v1/transports", {"name": "elsewhere", "type": "voice",
                                                  "config": {"trunk": "other", "cps": 1}})
    assert status == 201
    reader = LimitsReader(db, ttl_s=1.0)
    assert await reader.get("shared") == Limits(max_channels=10, cps=2)
    assert await reader.get("nowhere") is None
    status, _ = await other.call("PATCH", f"/v1/transports/{ids[1]}", {"config": {"cps": 0.5}})
    assert status == 200
    deadline = time.monotonic() + 3.0
    while await reader.get("shared") != Limits(10, 0.5):
        assert time.monotonic() < deadline, "the PATCHed cps was not seen within seconds"
        await asyncio.sleep(0.1)
