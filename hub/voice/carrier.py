"""A carrier's limits on one PJSIP endpoint (the trunk), held in Redis for every app and
every `hub voice` process that dials through it (DESIGN §1).

- Channels: `hub:carrier:<endpoint>:channels` is a sorted set of channel leases, member
  the channel id, score the lease's expiry (ms, Redis's clock). A channel is acquired
  before it is originated and released when it is destroyed; the controller renews the
  leases of its live calls every `RENEW_EVERY_S`. A dead controller's channels come back
  when their leases run out.
- Calls per second: one GCRA slot per call (`hub:carrier:<endpoint>:cps`), the same Lua
  function as the transports' messages per second (`hub.transports.limits.reserve_slot`).
- A call takes its channel and its slot in one step of one script (`take_calls`): expired
  leases dropped, the count, the slot and the lease at once, so no two processes can both
  take the last channel, and a call that gets no slot holds no channel. Calls started
  together take theirs in one round, each in turn as if alone.
- Limits: an endpoint's effective `maxChannels` and `cps` are the smallest over every voice
  transport, in any app, that names it (`LimitsReader`, read again after `LIMITS_TTL_S`);
  they are passed in on each call, so a PATCHed limit applies within seconds.
- Turns: sessions sharing an endpoint are served in turn (`next_session`, a counter per
  endpoint shared by all controllers; `take_turns` for a batch already claimed).

Every Redis call has a time limit. When Redis fails or is slow, the answer is "not now"
(no channel, no slot): a limit is never assumed to be free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub.aredis import Lua
from hub.batching import GroupCommit
from hub.constants import REDIS_PREFIX
from hub.store import voice as store
from hub.transports.limits import SLOT_FUNCTION_LUA, slot_args, slot_wait
from hub.voice.trunks import VoiceConfig

log = logging.getLogger(__name__)

CHANNEL_LEASE_S = 15.0   # a channel whose controller stopped renewing it is free after this
RENEW_EVERY_S = 5.0      # how often a controller renews the leases of its live channels
REDIS_TIMEOUT_S = 1.0    # each Redis call; past it the answer is "not now"
LIMITS_TTL_S = 2.0       # an endpoint's limits are read again after this
RELEASE_WAIT_S = 0.01    # channels given back within this go to Redis in one call
PROBLEM_TTL_S = 3600     # a trunk problem is shown (`hub trunks`) for this long

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""
# full(leases, channel, cap): every channel is held, and not already by `channel`.
_FULL = """
local function full(key, channel, cap)
  return not redis.call('ZSCORE', key, channel) and redis.call('ZCARD', key) >= cap
end
"""

# KEYS[1] the endpoint's leases, KEYS[2] its calls per second (`reserve_slot`'s TAT);
# ARGV[1] cap, ARGV[2] lease (ms), ARGV[3..5] the slot (`slot_args`), ARGV[6..] channel
# ids. For each channel in turn, a channel and the call's slot in one step: -2 the
# endpoint is full, -1 no slot within the horizon (neither is taken then), else µs until
# the slot, the channel held (newly, or its lease extended).
TAKE_CALLS = Lua(_NOW_MS + _FULL + SLOT_FUNCTION_LUA + """
local cap, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local waits = {}
for i = 6, #ARGV do
  local wait = -2
  if not full(KEYS[1], ARGV[i], cap) then
    wait = reserve_slot(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
    if wait >= 0 then
      redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
    end
  end
  waits[i - 5] = wait
end
return waits
""")

# KEYS[1] the endpoint's leases; ARGV[1] lease (ms), ARGV[2..] live channel ids.
# Extends every lease; a live channel whose lease had run out is counted again (it holds a
# carrier channel whatever the set says). Returns how many had run out.
RENEW = Lua(_NOW_MS + """
local lost = 0
for i = 2, #ARGV do
  lost = lost + redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
return lost
""")

# KEYS[1] the endpoint's leases. Returns the number of live leases.
HELD = Lua(_NOW_MS + "return redis.call('ZCARD', KEYS[1])")


@dataclass(frozen=True)
class Limits:
    max_channels: int
    cps: float


def combined(configs: Iterable[VoiceConfig]) -> Limits | None:
    """The limits that hold for all of these transports at once (the smallest of each);
    None when there are none."""
    configs = list(configs)
    if not configs:
        return None
    return Limits(min(c.max_channels for c in configs), min(c.cps for c in configs))


class LimitsReader:
    """Effective limits per endpoint, from every voice transport that names it, read from
    PostgreSQL again once they are `ttl_s` old."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = LIMITS_TTL_S) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Limits | None]] = {}

    async def get(self, endpoint: str) -> Limits | None:
        cached = self._cache.get(endpoint)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        async with self.pool.acquire() as conn:
            configs = await store.endpoint_configs(conn, endpoint)
        limits = combined(VoiceConfig.model_validate(c) for c in configs)
        self._cache[endpoint] = (time.monotonic(), limits)
        return limits


def take_turns(items: Iterable[T], session_of: Callable[[T], K]) -> list[T]:
    """Items reordered round-robin by session (the first of each session, then the second
    of each, ...), each session's own order kept."""
    queues: dict[K, list[T]] = {}
    for item in items:
        queues.setdefault(session_of(item), []).append(item)
    ordered: list[T] = []
    rounds = max((len(q) for q in queues.values()), default=0)
    for i in range(rounds):
        ordered += [q[i] for q in queues.values() if i < len(q)]
    return ordered


def _key(endpoint: str, what: str) -> str:
    return f"{REDIS_PREFIX}carrier:{endpoint}:{what}"


class Carrier:
    """The shared limits of the endpoints one controller dials through."""

    def __init__(self, redis: Redis, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.redis = redis
        self.timeout_s = timeout_s
        self._turns = 0  # used only while Redis is unavailable
        self._releases: GroupCommit[tuple[str, str], None] = GroupCommit(
            self._release_many, wait_s=RELEASE_WAIT_S)

    async def _call(self, what: str, endpoint: str, coro: Awaitable[Any]) -> Any:
        """The Redis call's answer, or None when Redis failed or took too long."""
        try:
            async with asyncio.timeout(self.timeout_s):  # no task per call, as wait_for makes
                return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("carrier %s: %s failed (%s); not now", endpoint, what,
                        exc or type(exc).__name__)
            return None

    async def take_calls(self, endpoint: str, channel_ids: Sequence[str], cap: int, cps: float,
                         max_wait_s: float | None, lease_s: float = CHANNEL_LEASE_S
                         ) -> list[float | None]:
        """For each of these channels in turn, in one Redis round (calls started
        together): one of the endpoint's `cap` channels (holding it already extends its
        lease) and the next of its call slots at `cps`; each one's seconds until its slot
        (originate then), or None when every channel is held, the slot is further away
        than `max_wait_s` (then no channel is taken either), or Redis did not answer."""
        waits = await self._call("take", endpoint, TAKE_CALLS(
            self.redis, [_key(endpoint, "channels"), _key(endpoint, "cps")],
            [cap, _ms(lease_s), *slot_args(cps, max_wait_s), *channel_ids]))
        if waits is None:
            return [None] * len(channel_ids)
        return [slot_wait(wait_us) for wait_us in waits]

    async def renew(self, endpoint: str, channel_ids: Sequence[str],
                    lease_s: float = CHANNEL_LEASE_S) -> int | None:
        """Extend the leases of these live channels; how many had run out (they are held
        again), or None when Redis did not answer."""
        if not channel_ids:
            return 0
        lost = await self._call("renew", endpoint, RENEW(
            self.redis, [_key(endpoint, "channels")], [_ms(lease_s), *channel_ids]))
        return None if lost is None else int(lost)

    async def release(self, endpoint: str, channel_id: str) -> None:
        """Give the channel back (its call ended or was never placed), with the others
        given back meanwhile (one Redis call for them). If Redis does not answer, the
        lease runs out by itself."""
        await self._releases.submit((endpoint, channel_id))

    async def _release_many(self, channels: list[tuple[str, str]]) -> list[None]:
        by_endpoint: dict[str, list[str]] = {}
        for endpoint, channel_id in channels:
            by_endpoint.setdefault(endpoint, []).append(channel_id)
        await asyncio.gather(*(self._call("release", endpoint,
                                          self.redis.zrem(_key(endpoint, "channels"), *ids))
                               for endpoint, ids in by_endpoint.items()))
        return [None] * len(channels)

    async def drain(self) -> None:
        """Wait until the channels given back so far are released (a controller stopping)."""
        await self._releases.drain()

    async def held(self, endpoint: str) -> int | None:
        """Channels held on the endpoint by every controller; None when Redis did not answer."""
        held = await self._call("count", endpoint,
                                HELD(self.redis, [_key(endpoint, "channels")], []))
        return None if held is None else int(held)

    async def next_session(self, endpoint: str, session_ids: Sequence[K]) -> K | None:
        """Whose turn it is among the sessions with work on the endpoint: a counter shared
        by every controller walks them in a stable order, one claim at a time."""
        if not session_ids:
            return None
        turn = await self._call("turn", endpoint, self.redis.incr(_key(endpoint, "turn")))
        if turn is None:
            self._turns += 1
            turn = self._turns
        ordered = sorted(session_ids, key=str)
        return ordered[(int(turn) - 1) % len(ordered)]

    async def note_problem(self, endpoint: str, sip_code: int, note: str) -> None:
        """Remember the trunk's latest problem (a refusal or its own failure) for `hub trunks`."""
        key = _key(endpoint, "problem")
        at = datetime.now(UTC).isoformat()
        await self._call("problem", endpoint, self.redis.hset(
            key, mapping={"sipCode": sip_code, "note": note, "at": at}))
        await self._call("problem", endpoint, self.redis.expire(key, PROBLEM_TTL_S))

    async def last_problem(self, endpoint: str) -> dict[str, Any] | None:
        """The trunk's latest problem within the last hour: {sipCode, note, at}."""
        raw = await self._call("problem", endpoint, self.redis.hgetall(_key(endpoint, "problem")))
        if not raw:
            return None
        got = {_text(k): _text(v) for k, v in raw.items()}
        return {"sipCode": int(got["sipCode"]), "note": got["note"], "at": got["at"]}


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
