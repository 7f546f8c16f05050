"""SMTP connections kept between a worker's sessions (`hub.transports.smtp_pool`), against a
real SMTP server (aiosmtpd) through the real email sender (`EmailSpec.open`).

Kept connections must never cost a recipient an attempt: one the server closed while idle,
or one a middlebox silently stopped carrying, is replaced before a message goes on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hub.config import Settings
from hub.dev import smtp
from hub.transports import smtp_pool
from hub.transports.base import Recipient
from hub.transports.email import EmailSpec

EMAIL = EmailSpec()
SETTINGS = Settings(allow_private_urls=True)
CONTENT = {"subject": "Hello", "message": "Body"}


@contextlib.contextmanager
def sink(idle_timeout_s: float = 300.0) -> Iterator[tuple[int, smtp.SmtpSink]]:
    controller, received = smtp.start(idle_timeout_s=idle_timeout_s)
    try:
        yield controller.port, received
    finally:
        controller.stop()


def config(port: int, **more: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "from": "hub@example.com", **more}


_sent = 0


def recipient(address: str) -> Recipient:
    global _sent
    _sent += 1
    return Recipient(delivery_id=_sent, attempt_id=f"a-{_sent}", attempt=1, address=address)


async def session(cfg: dict[str, Any], *addresses: str, transport: str = "t1") -> list[str]:
    """One session's batch through a sender, as a job runs it: the outcomes."""
    async with EMAIL.open(cfg, CONTENT, SETTINGS, transport) as sender:
        results = await asyncio.gather(*(sender.send(recipient(a)) for a in addresses))
    return [r.outcome for r in results]


@contextlib.asynccontextmanager
async def kept() -> AsyncIterator[smtp_pool.Pools]:
    """What a worker's job loop does for its jobs."""
    pools = smtp_pool.Pools()
    try:
        with smtp_pool.kept(pools):
            yield pools
    finally:
        await pools.close()


async def test_sessions_in_a_worker_share_a_connection_and_quit_it_when_it_closes() -> None:
    with sink() as (port, got):
        async with kept():
            for i in range(3):
                assert await session(config(port), f"a{i}@example.com",
                                     f"b{i}@example.com") == ["delivered"] * 2
                # the first session's two sends ran at once, on two connections; the
                # sessions after it found them open
                assert got.connections() == 2 and got.quits == 0
        assert got.quits == 2  # the job loop closing QUITs what it kept
        assert len(got.received) == 6 and not got.duplicates()


async def test_outside_a_worker_each_batch_has_its_own_connections() -> None:
    with sink() as (port, got):
        for i in range(2):
            assert await session(config(port), f"a{i}@example.com") == ["delivered"]
        assert got.connections() == 2 and got.quits == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced_unnoticed() -> None:
    with sink(idle_timeout_s=0.3) as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            await asyncio.sleep(0.8)  # the server times the idle connection out (421)
            assert await session(config(port), "b@example.com") == ["delivered"]
        assert got.connections() == 2
        assert [r.rcpt for r in got.received] == ["a@example.com", "b@example.com"]


class Blackhole:
    """A TCP relay to the sink that can stop carrying its open connections without closing
    them (a middlebox that dropped its state); connections made later are carried."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.dead: set[asyncio.StreamWriter] = set()
        self.live: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    way: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if way in self.dead:
                    continue  # swallowed: neither side hears of it
                dst.write(data)
                await dst.drain()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.live.append((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, writer),
                             self._pipe(up_reader, writer, writer))

    def drop_all(self) -> None:
        self.dead.update(client for client, _ in self.live)

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client, upstream in self.live:
            client.close()
            upstream.close()
        assert self._server is not None
        self._server.close()


async def test_a_connection_a_middlebox_dropped_is_found_out_before_a_message_goes_on_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_pool, "CHECK_AFTER_S", 0.2)
    monkeypatch.setattr(smtp_pool, "CHECK_TIMEOUT_S", 0.5)
    with sink() as (port, got):
        async with Blackhole(port) as relay, kept():
            assert await session(config(relay.port), "a@example.com") == ["delivered"]
            relay.drop_all()
            await asyncio.sleep(0.3)  # idle past the check: asked NOOP, which goes nowhere
            assert await session(config(relay.port), "b@example.com") == ["delivered"]
            assert got.connections() == 2
        assert [r.rcpt for r in got.received] == ["a@example.com", "b@example.com"]


async def test_max_connections_holds_across_the_sessions_of_a_worker() -> None:
    with sink() as (port, got):
        got.delay_s = 0.05
        cfg = config(port, max_connections=1)
        async with kept():
            outcomes = await asyncio.gather(
                session(cfg, "a1@example.com", "a2@example.com", "a3@example.com"),
                session(cfg, "b1@example.com", "b2@example.com", "b3@example.com"))
        assert outcomes == [["delivered"] * 3] * 2
        assert got.connections() == 1
        assert len(got.received) == 6 and not got.duplicates()


async def test_a_changed_config_or_another_transport_gets_its_own_connections() -> None:
    with sink() as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            assert await session(config(port, username=None, max_connections=2),
                                 "b@example.com") == ["delivered"]
            assert await session(config(port), "c@example.com", transport="t2") == ["delivered"]
            assert await session(config(port), "d@example.com") == ["delivered"]
        assert got.connections() == 3


async def test_an_idle_connection_is_quit_after_idle_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_pool, "IDLE_S", 0.3)
    with sink() as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            await asyncio.sleep(0.8)
            assert got.quits == 1  # nobody used it: QUIT by the sweep, not at the end
            assert await session(config(port), "b@example.com") == ["delivered"]
            assert got.connections() == 2


async def test_a_send_cancelled_mid_message_never_leaves_its_connection_for_reuse() -> None:
    with sink() as (port, got):
        got.delay_s = 1.0
        async with kept():
            sending = asyncio.create_task(session(config(port), "a@example.com"))
            await asyncio.sleep(0.3)  # in DATA: the server sits on the message
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            got.delay_s = 0.0
            assert await session(config(port), "b@example.com") == ["delivered"]
        assert got.connections() == 2
