"""SMTP connections kept between a worker's sessions (`hub.transports.smtp_pool`), against a
real SMTP server (aiosmtpd) through the real email sender (`EmailSpec.open`).

Kept connections must never cost a recipient an attempt: one the server closed while idle,
one a middlebox silently stopped carrying, one that fails before the message's DATA, is
replaced and the message goes on a new one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiosmtplib
import pytest

from hub.config import Settings
from hub.dev import smtp
from hub.transports import smtp_pool
from hub.transports.base import Recipient
from hub.transports.email import EmailSpec
from tests.helpers import eventually

EMAIL = EmailSpec()
SETTINGS = Settings(allow_private_urls=True)
CONTENT = {"subject": "Hello", "message": "Body"}


@contextlib.contextmanager
def sink(idle_timeout_s: float = 300.0, size_limit: int = 33_554_432, smtputf8: bool = True
         ) -> Iterator[tuple[int, smtp.SmtpSink]]:
    controller, received = smtp.start(idle_timeout_s=idle_timeout_s, size_limit=size_limit,
                                      smtputf8=smtputf8)
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


def entry(pools: smtp_pool.Pools) -> smtp_pool.Connections:
    [only] = pools._by_key.values()
    return only


async def condition(check: bool) -> bool | None:
    return check or None


def count_noops(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The NOOPs the hub asks (by when each was asked): a blackholed one never reaches the
    sink, so they are counted at the client."""
    asked: list[float] = []
    real = aiosmtplib.SMTP.noop

    async def noop(self: aiosmtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
        asked.append(time.monotonic())
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(aiosmtplib.SMTP, "noop", noop)
    return asked


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
        async with kept() as pools:
            assert await session(config(port), "a@example.com") == ["delivered"]
            [idle] = entry(pools)._idle
            await eventually(lambda: condition(not idle.client.is_connected), 10,
                             "the server to close the idle connection")
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
    """Found out by its NOOP (within CHECK_TIMEOUT_S), not by the message's own timeout
    (20 s here)."""
    monkeypatch.setattr(smtp_pool, "CHECK_AFTER_S", 0.2)
    monkeypatch.setattr(smtp_pool, "CHECK_TIMEOUT_S", 0.5)
    noops = count_noops(monkeypatch)
    with sink() as (port, got):
        async with Blackhole(port) as relay, kept():
            cfg = config(relay.port, timeout_s=20.0)
            assert await session(cfg, "a@example.com") == ["delivered"]
            relay.drop_all()
            await asyncio.sleep(0.3)  # idle past the check: asked NOOP, which goes nowhere
            started = time.monotonic()
            assert await session(cfg, "b@example.com") == ["delivered"]
            assert len(noops) == 1 and time.monotonic() - started < 15
            assert got.connections() == 2
        assert [r.rcpt for r in got.received] == ["a@example.com", "b@example.com"]


async def test_a_changed_config_or_another_transport_gets_its_own_connections() -> None:
    with sink() as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            assert await session(config(port, max_connections=2), "b@example.com") == [
                "delivered"]
            assert await session({**config(port), "from": "other@example.com"},
                                 "b2@example.com") == ["delivered"]
            assert await session(config(port), "c@example.com", transport="t2") == ["delivered"]
            assert await session(config(port), "d@example.com") == ["delivered"]
        assert got.connections() == 4


async def test_an_idle_connection_is_quit_after_idle_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_pool, "IDLE_S", 0.3)
    with sink() as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            # nobody used it: QUIT by the sweep, not at the end
            await eventually(lambda: condition(got.quits == 1), 10, "the idle connection's QUIT")
            assert await session(config(port), "b@example.com") == ["delivered"]
            assert got.connections() == 2


async def test_a_connection_is_retired_once_old_when_given_back_or_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_pool, "MAX_AGE_S", 0.2)
    with sink() as (port, got):
        async with kept() as pools:
            got.delay_s = 0.3  # old by the time its message is through: QUIT, not kept
            assert await session(config(port), "a@example.com") == ["delivered"]
            await eventually(lambda: condition(got.quits == 1), 10, "the old connection's QUIT")
            assert entry(pools).idle_count() == 0
            got.delay_s = 0.0
            assert await session(config(port), "b@example.com") == ["delivered"]
            await asyncio.sleep(0.3)  # kept, and old by the next session: QUIT, not used
            assert await session(config(port), "c@example.com") == ["delivered"]
            await eventually(lambda: condition(got.quits == 2), 10, "the kept one's QUIT")
        assert got.connections() == 3


async def test_a_worker_keeps_at_most_max_idle_connections_across_transports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_pool, "MAX_IDLE", 1)
    with sink() as (port, got):
        async with kept() as pools:
            assert await session(config(port), "a@example.com", transport="t1") == ["delivered"]
            assert await session(config(port), "b@example.com", transport="t2") == ["delivered"]
            await eventually(lambda: condition(got.quits == 1), 10, "the older one's QUIT")
            assert sum(c.idle_count() for c in pools._by_key.values()) == 1
            assert await session(config(port), "c@example.com", transport="t2") == ["delivered"]
        assert got.connections() == 2


async def test_a_kept_connection_that_stopped_carrying_is_replaced_for_the_same_message() -> None:
    """Reused at once (no NOOP yet): its MAIL times out, the message goes on a new
    connection, and the recipient's attempt is the delivery."""
    with sink() as (port, got):
        async with Blackhole(port) as relay, kept():
            cfg = config(relay.port, timeout_s=1.0)
            assert await session(cfg, "a@example.com") == ["delivered"]
            relay.drop_all()
            assert await session(cfg, "b@example.com") == ["delivered"]
            assert got.connections() == 2
        assert [r.rcpt for r in got.received] == ["a@example.com", "b@example.com"]


async def test_a_421_before_data_on_a_kept_connection_goes_again_on_a_new_one() -> None:
    with sink() as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            got.scripts["b@example.com"] = ["421 4.7.0 too many messages on this connection"]
            assert await session(config(port), "b@example.com") == ["delivered"]
            assert got.connections() == 2
            # on a new connection a 421 is the message's: a temporary failure, retried later
            got.scripts["c@example.com"] = ["421 4.7.0 closing"]
            assert await session(config(port, max_connections=3), "c@example.com") == [
                "temporary_failure"]
        assert [r.rcpt for r in got.received] == ["a@example.com", "b@example.com"]


async def test_a_refused_message_does_not_leave_its_connection_for_reuse() -> None:
    with sink() as (port, got):
        async with kept() as pools:
            assert await session(config(port), "bounce@example.com") == ["permanent_failure"]
            assert entry(pools).idle_count() == 0  # its state after the refusal is not known
            assert await session(config(port), "a@example.com") == ["delivered"]
        assert got.connections() == 2


async def test_an_unanswered_noop_closes_the_older_idle_connections_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A middlebox that dropped one kept connection dropped them all: one NOOP's timeout,
    not one per connection, before the message goes on a new one."""
    monkeypatch.setattr(smtp_pool, "CHECK_AFTER_S", 0.1)
    monkeypatch.setattr(smtp_pool, "CHECK_TIMEOUT_S", 1.0)
    noops = count_noops(monkeypatch)
    with sink() as (port, got):
        async with Blackhole(port) as relay, kept() as pools:
            many = [f"a{i}@example.com" for i in range(3)]
            assert await session(config(relay.port), *many) == ["delivered"] * 3
            kept_before = entry(pools).idle_count()
            assert kept_before >= 2
            relay.drop_all()
            await asyncio.sleep(0.2)
            assert await session(config(relay.port), "b@example.com") == ["delivered"]
            assert len(noops) == 1  # one NOOP's wait, not one per dropped connection
            assert entry(pools).idle_count() == 1  # the new one
            assert got.connections() == kept_before + 1


async def test_a_send_cancelled_mid_message_never_leaves_its_connection_for_reuse() -> None:
    with sink() as (port, got):
        got.delay_s = 1.0
        async with kept() as pools:
            sending = asyncio.create_task(session(config(port), "a@example.com"))
            await eventually(lambda: condition(got.in_data == 1), 10, "the message's DATA")
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            kept_ = entry(pools)
            assert kept_.in_use == 0 and kept_.idle_count() == 0  # closed, not kept
            assert got.quits == 0
            got.delay_s = 0.0
            assert await session(config(port), "b@example.com") == ["delivered"]
        assert got.connections() == 2


async def test_a_kept_connection_failing_once_data_began_is_not_sent_again() -> None:
    """Past DATA the server may have taken the message: a timeout there is the attempt's
    temporary failure (retried on the schedule, the Message-ID naming the attempt), never
    a second copy at once."""
    with sink() as (port, got):
        async with kept():
            cfg = config(port, timeout_s=1.0)
            assert await session(cfg, "a@example.com") == ["delivered"]
            got.delay_s = 4.0  # the server sits on the message past the client's timeout
            assert await session(cfg, "b@example.com") == ["temporary_failure"]
            await asyncio.sleep(0.5)  # time for a second copy to arrive, if one were sent
        assert got.in_data == 2  # a's, then b's once


async def test_a_message_over_the_server_s_size_is_refused_at_mail_before_its_upload() -> None:
    """MAIL carries SIZE= (as aiosmtplib's sendmail did): too big is a permanent 552 and
    nothing is uploaded."""
    with sink(size_limit=64) as (port, got):
        async with EMAIL.open(config(port), CONTENT, SETTINGS, "t1") as sender:
            result = await sender.send(recipient("a@example.com"))
        assert result.outcome == "permanent_failure" and result.detail["smtpCode"] == 552
        assert "message size exceeds" in result.detail["smtpReply"]  # MAIL's reply, not DATA's
        assert got.in_data == 0


async def test_sessions_at_once_never_wait_on_each_other_for_a_connection() -> None:
    """Each sender has its own slots (one per pipeline consumer): a send the pipeline found
    safe to send never queues behind another session's for a kept connection."""
    with sink() as (port, got):
        got.delay_s = 0.2
        cfg = config(port, max_connections=1)
        async with kept():
            outcomes = await asyncio.gather(session(cfg, "a@example.com"),
                                            session(cfg, "b@example.com"))
        assert outcomes == [["delivered"]] * 2
        assert got.connections() == 2  # at once, one each


async def test_a_send_cancelled_during_its_noop_closes_that_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_pool, "CHECK_AFTER_S", 0.1)
    noops = count_noops(monkeypatch)
    with sink() as (port, got):
        async with Blackhole(port) as relay, kept() as pools:
            assert await session(config(relay.port), "a@example.com") == ["delivered"]
            [idle] = entry(pools)._idle
            relay.drop_all()
            await asyncio.sleep(0.2)
            sending = asyncio.create_task(session(config(relay.port), "b@example.com"))
            await eventually(lambda: condition(len(noops) == 1), 10, "the NOOP")
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            assert not idle.client.is_connected  # closed, not left open and forgotten
            assert entry(pools).in_use == 0 and entry(pools).idle_count() == 0


async def test_an_unreadable_reply_on_a_kept_connection_goes_again_on_a_new_one() -> None:
    """aiosmtplib's -1 (a reply it could not read) is the connection's trouble: on a kept
    connection before DATA the message goes on a new one; on a new connection it is a
    temporary failure. An unexpected 3xx refusal stays permanent."""
    with sink() as (port, got):
        async with kept():
            assert await session(config(port), "a@example.com") == ["delivered"]
            got.scripts["b@example.com"] = ["garbled reply"]
            assert await session(config(port), "b@example.com") == ["delivered"]
            assert got.connections() == 2
            got.scripts["c@example.com"] = ["garbled reply"]
            assert await session(config(port, max_connections=3), "c@example.com") == [
                "temporary_failure"]
            got.scripts["d@example.com"] = ["354 what?"]
            assert await session(config(port, max_connections=4), "d@example.com") == [
                "permanent_failure"]
        assert [r.rcpt for r in got.received] == ["a@example.com", "b@example.com"]


async def test_a_non_ascii_address_goes_with_smtputf8_and_like_any_on_a_kept_connection(
) -> None:
    with sink() as (port, got):
        async with Blackhole(port) as relay, kept():
            cfg = config(relay.port, timeout_s=1.0)
            assert await session(cfg, "a@example.com") == ["delivered"]
            relay.drop_all()  # reused at once: its MAIL times out, before DATA
            assert await session(cfg, "jörg@bücher.example") == ["delivered"]
            assert got.connections() == 2
        [_, utf8] = got.received
        assert utf8.rcpt == "jörg@bücher.example"
        assert "\r\nTo: jörg@bücher.example\r\n".encode() in utf8.raw


async def test_a_non_ascii_address_to_a_server_without_smtputf8_fails_permanently() -> None:
    with sink(smtputf8=False) as (port, got):
        async with kept() as pools:
            async with EMAIL.open(config(port), CONTENT, SETTINGS, "t1") as sender:
                result = await sender.send(recipient("jörg@bücher.example"))
            assert result.outcome == "permanent_failure" and "SMTPUTF8" in (result.error or "")
            assert entry(pools).idle_count() == 1  # nothing was sent on it: kept
            assert await session(config(port), "a@example.com") == ["delivered"]
        assert got.connections() == 1 and [r.rcpt for r in got.received] == ["a@example.com"]


async def test_a_server_without_smtputf8_gets_an_international_domain_in_ascii() -> None:
    with sink(smtputf8=False) as (port, got):
        assert await session(config(port), "user@bücher.example") == ["delivered"]
        [one] = got.received
        assert one.rcpt == "user@xn--bcher-kva.example"
        assert one.raw.startswith(b"To: user@xn--bcher-kva.example\r\n")
