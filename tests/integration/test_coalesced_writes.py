"""The voice controller's websocket writes joined per pass of the event loop
(`hub.voice.coalesce`), on a real aiohttp websocket over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from hub.voice.coalesce import CoalescingTransport, coalesce_writes
from tests.helpers import local_server


class Counting(asyncio.Transport):
    """A transport that keeps what is written to it, one entry per write (and passes it
    on to `real` when given)."""

    def __init__(self, real: asyncio.Transport | None = None, fail: bool = False) -> None:
        super().__init__()
        self.real, self.fail = real, fail
        self.writes: list[bytes] = []
        self.closing = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail:
            raise ConnectionResetError("gone")
        self.writes.append(bytes(data))
        if self.real is not None:
            self.real.write(data)

    def is_closing(self) -> bool:
        return self.closing or (self.real is not None and self.real.is_closing())

    def abort(self) -> None:
        self.aborted = True


async def test_writes_of_one_pass_go_out_as_one_in_order() -> None:
    real = Counting()
    joined = CoalescingTransport(real)
    joined.write(b"one ")
    joined.write(bytearray(b"two "))
    joined.write(memoryview(b"three"))
    assert real.writes == []  # nothing before the pass is over
    await asyncio.sleep(0)
    assert real.writes == [b"one two three"]
    joined.write(b"four")
    await asyncio.sleep(0)
    assert real.writes == [b"one two three", b"four"]


async def test_a_control_frame_goes_out_at_once_after_what_came_before() -> None:
    real = Counting()
    joined = CoalescingTransport(real)
    joined.write(b"\x81\x02hi")           # a text frame: kept
    joined.write(b"\x88\x02\x03\xe8")     # a close frame: everything goes now
    assert real.writes == [b"\x81\x02hi\x88\x02\x03\xe8"]
    await asyncio.sleep(0)
    assert len(real.writes) == 1


async def test_kept_data_is_dropped_once_the_connection_is_lost() -> None:
    real = Counting()
    joined = CoalescingTransport(real)
    joined.write(b"late")
    real.closing = True
    assert joined.is_closing()
    await asyncio.sleep(0)
    assert real.writes == []


async def test_a_write_that_fails_aborts_the_connection() -> None:
    real = Counting(fail=True)
    joined = CoalescingTransport(real)
    joined.write(b"data")
    await asyncio.sleep(0)  # the flush raised inside the loop's callback: handled there
    assert real.aborted


async def _serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    return await local_server(app)


async def test_frames_sent_together_arrive_whole_and_in_order() -> None:
    received: list[str] = []
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
            if len(received) == 200:
                done.set()
            await ws.send_str(f"ack {msg.data}")
        return ws

    runner, base = await _serve(handler)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/ws") as ws:
            assert coalesce_writes(ws)  # this aiohttp's writer can be joined
            assert coalesce_writes(ws)  # and joining twice wraps once
            joined = ws._writer.transport
            assert isinstance(joined, CoalescingTransport)
            counting = joined._transport = Counting(joined._transport)  # what reaches the socket
            texts = [f"frame {i} " + "x" * (i * 40) for i in range(200)]  # 126+ byte frames too
            await asyncio.gather(*(ws.send_str(t) for t in texts))
            await asyncio.wait_for(done.wait(), 5)
            assert received == texts
            assert len(counting.writes) <= 3, len(counting.writes)  # not 200: joined
            acks = [(await ws.receive()).data for _ in texts]
            assert acks == [f"ack {t}" for t in texts]
            await ws.close()
    finally:
        await runner.cleanup()


async def test_a_close_from_the_other_side_is_answered() -> None:
    """The server closes; the client's close frame (kept, then flushed at once) reaches it,
    so the server's close completes at once with 1000, not after its time-out."""
    closed: dict[str, object] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(timeout=5)
        await ws.prepare(request)
        await ws.receive()
        began = time.monotonic()
        await ws.close()
        closed.update(code=ws.close_code, took=time.monotonic() - began)
        return ws

    runner, base = await _serve(handler)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/ws") as ws:
            assert coalesce_writes(ws)
            await ws.send_str("hello")
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE
        for _ in range(50):
            if closed:
                break
            await asyncio.sleep(0.1)
        assert closed["code"] == 1000 and float(closed["took"]) < 2, closed  # type: ignore[arg-type]
    finally:
        await runner.cleanup()
