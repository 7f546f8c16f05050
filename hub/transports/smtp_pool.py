"""SMTP connections kept between the sessions and jobs of one worker process.

A job used to open a session's SMTP connections when it started the session and QUIT them
when it was done: for many small sessions (a notification to two people each) that was a
TCP connection, the greeting and EHLO (and TLS and AUTH where configured) per session, for
the worker and for the customer's server alike. The worker's job loop
(`hub.jobs.jobloop`) keeps one `Pools` for the process's life and hands it to its jobs
through `KEPT` (a context variable). Outside a job loop (`hub demo`, a test calling a
sender) a sender keeps its connections for its own batch and closes them at its end.

Kept per transport and config: a changed host or password gets new connections. Each
session's sender still uses at most the transport's `max_connections` at once, with slots
of its own, so that no send waits for a connection after the pipeline found its claim
safe to send.

Limits: a connection is closed (QUIT) once unused for `IDLE_S`, and once `MAX_AGE_S` old
(checked when it is given back and when it is taken: credentials revoked or the host's
address changed reach kept connections within that time); the longest unused first when
the process keeps more than `MAX_IDLE` unused.

Checks: one unused for more than `CHECK_AFTER_S` answers a NOOP before it carries a
message (one that goes unanswered closes those idle since before it too: a middlebox that
dropped one dropped them all), and a kept connection that fails before the message's DATA
began (the server closed it just then, answered 421, or garbled its reply) is replaced by
a new one for the same message (`take(fresh=True)`), so a connection kept open costs no
recipient an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import aiosmtplib

IDLE_S = 30.0          # an unused connection is closed after this long
MAX_AGE_S = 300.0      # ... and a used one once it is this old
MAX_IDLE = 64          # unused connections a process keeps, across its transports
CHECK_AFTER_S = 5.0    # one unused for longer answers a NOOP before it is used again
CHECK_TIMEOUT_S = 5.0  # ... within this long
QUIT_TIMEOUT_S = 1.0

Connect = Callable[[], Awaitable[aiosmtplib.SMTP]]
TROUBLE = (aiosmtplib.SMTPException, OSError, TimeoutError)


@dataclass
class _Idle:
    client: aiosmtplib.SMTP
    since: float  # monotonic time it was given back


class Connections:
    """Connections to one server as one transport configures it (each sender caps how many
    it uses at once): those given back are reused freshest first, and,
    when `keep_s` is set, closed once unused that long or `MAX_AGE_S` old."""

    def __init__(self, keep_s: float | None = None) -> None:
        self.keep_s = keep_s
        self.in_use = 0
        self.users = 0  # senders holding this (see `Pools.use`)
        self.closed = False
        self._idle: list[_Idle] = []  # oldest first
        self._born: weakref.WeakKeyDictionary[aiosmtplib.SMTP, float] = (
            weakref.WeakKeyDictionary())
        self._sweep_at: asyncio.TimerHandle | None = None
        self._quitting: set[asyncio.Task[None]] = set()

    async def take(self, connect: Connect, *, fresh: bool = False
                   ) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection for one message and whether it was kept
        from before: an idle one still connected (asked NOOP first when it has been idle
        a while), else (or when `fresh`) a new one."""
        while self._idle and not fresh:
            kept = self._idle.pop()
            if not kept.client.is_connected:
                continue
            if self._too_old(kept.client):
                self._quit(kept.client)
                continue
            if time.monotonic() - kept.since > CHECK_AFTER_S:
                try:
                    await kept.client.noop(timeout=CHECK_TIMEOUT_S)
                except TROUBLE:  # those idle since before it went the same way, surely
                    kept.client.close()
                    older = [i for i in self._idle if i.since <= kept.since]
                    self._idle = [i for i in self._idle if i.since > kept.since]
                    for gone in older:
                        gone.client.close()
                    continue
                except BaseException:  # cancelled while asking: not left half-used
                    kept.client.close()
                    raise
            self.in_use += 1
            return kept.client, True
        client = await connect()
        self._born[client] = time.monotonic()
        self.in_use += 1
        return client, False

    def give(self, client: aiosmtplib.SMTP) -> None:
        """Back after a message went well: kept for the next one if still connected
        (QUIT instead once old, or when the pool is closed)."""
        self.in_use -= 1
        if not client.is_connected:
            return
        if self.closed or self._too_old(client):
            self._quit(client)
            return
        self._idle.append(_Idle(client, time.monotonic()))
        if self.keep_s is not None and self._sweep_at is None:
            self._sweep_at = asyncio.get_running_loop().call_later(self.keep_s, self._sweep)

    def _too_old(self, client: aiosmtplib.SMTP) -> bool:
        now = time.monotonic()
        return self.keep_s is not None and now - self._born.get(client, now) >= MAX_AGE_S

    def drop(self, client: aiosmtplib.SMTP | None) -> None:
        """Back after a refusal, trouble or an interrupted send: closed, never reused (its
        state is not known: an envelope the refusal left open, a reply half read)."""
        if client is None:
            return
        self.in_use -= 1
        if client.is_connected:
            client.close()

    def unused(self) -> bool:
        return self.users == 0 and self.in_use == 0 and not self._idle

    def idle_count(self) -> int:
        return len(self._idle)

    def idle_since(self) -> float | None:
        """When the longest-unused idle connection was given back."""
        return self._idle[0].since if self._idle else None

    def quit_oldest(self) -> None:
        self._quit(self._idle.pop(0).client)

    def _sweep(self) -> None:
        self._sweep_at = None
        assert self.keep_s is not None
        now = time.monotonic()
        while self._idle and now - self._idle[0].since >= self.keep_s:
            self.quit_oldest()
        if self._idle:
            wait = self._idle[0].since + self.keep_s - now
            self._sweep_at = asyncio.get_running_loop().call_later(wait, self._sweep)

    def _quit(self, client: aiosmtplib.SMTP) -> None:
        task = asyncio.get_running_loop().create_task(_quit(client))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def close(self) -> None:
        """QUIT every idle connection; those in use are closed as they come back."""
        self.closed = True
        if self._sweep_at is not None:
            self._sweep_at.cancel()
            self._sweep_at = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(kept.client) for kept in idle), *self._quitting)


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit(timeout=QUIT_TIMEOUT_S)
    except TROUBLE:
        client.close()


class Pools:
    """A process's kept connections, per transport and config."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Connections] = {}

    @contextlib.contextmanager
    def use(self, transport_id: str, config_json: str) -> Iterator[Connections]:
        """The connections of this transport and config, for one sender's life."""
        key = (transport_id, hashlib.sha256(config_json.encode()).hexdigest())
        found = self._by_key.get(key)
        if found is None:
            # a transport whose config changed leaves its old entry unused: forget those
            self._by_key = {k: v for k, v in self._by_key.items() if not v.unused()}
            found = self._by_key[key] = Connections(IDLE_S)
        found.users += 1
        try:
            yield found
        finally:
            found.users -= 1
            self._trim()

    def _trim(self) -> None:
        """Keep at most MAX_IDLE unused connections, QUITting the longest unused."""
        entries = list(self._by_key.values())
        idle = sum(e.idle_count() for e in entries)
        while idle > MAX_IDLE:
            oldest = min((e for e in entries if e.idle_since() is not None),
                         key=lambda e: e.idle_since() or 0.0)
            oldest.quit_oldest()
            idle -= 1

    async def close(self) -> None:
        pools, self._by_key = list(self._by_key.values()), {}
        await asyncio.gather(*(p.close() for p in pools))


KEPT: ContextVar[Pools | None] = ContextVar("hub_smtp_pools", default=None)


@contextlib.contextmanager
def kept(pools: Pools) -> Iterator[None]:
    """Within the block (and the tasks it starts), email senders use `pools`."""
    token = KEPT.set(pools)
    try:
        yield
    finally:
        KEPT.reset(token)
