"""The voice controller's websocket writes joined per pass of the event loop
(`hub.voice.coalesce`), on a real aiohttp websocket over loopback."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from hub.voice.coalesce import CoalescingTransport, coalesce_writes


class Counting(asyncio.Transport):
    """A transport that keeps what is written to it, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


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


async def test_nothing_is_written_to_a_closing_transport() -> None:
    real = Counting()
    joined = CoalescingTransport(real)
    joined.write(b"late")
    real.closing = True
    assert joined.is_closing()
    await asyncio.sleep(0)
    assert real.writes == []


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

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            assert coalesce_writes(ws)  # this aiohttp's writer can be joined
            assert coalesce_writes(ws)  # and joining twice wraps once
            texts = [f"frame {i} " + "x" * (i * 40) for i in range(200)]  # 126+ byte frames too
            await asyncio.gather(*(ws.send_str(t) for t in texts))
            await asyncio.wait_for(done.wait(), 5)
            assert received == texts
            acks = [(await ws.receive()).data for _ in texts]
            assert acks == [f"ack {t}" for t in texts]
            await ws.close()
    finally:
        await runner.cleanup()
