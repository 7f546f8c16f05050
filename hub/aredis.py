"""The asyncio Redis client every async part of the hub uses."""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError

MAX_CONNECTIONS = 64


def async_redis(url: str, *, timeout_s: float = 5.0, connect_timeout_s: float = 5.0,
                max_connections: int = MAX_CONNECTIONS) -> Redis:
    """A client on a bounded pool where a burst of commands waits its turn for a
    connection (at most `timeout_s`) instead of failing: redis-py 8's default pool
    refuses the 101st concurrent command with "Too many connections", which a voice
    controller ending hundreds of calls at once reaches."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s,
        socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s)
    return Redis.from_pool(pool)


class Lua:
    """A Lua script sent by its SHA1 (EVALSHA), not its text on every call; sent whole
    (EVAL, which also caches it) only when Redis does not know it (first use, a restart)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self.text, len(keys), *keys, *args)
