"""The FastAGI protocol (hub/voice/agi.py) against real sockets: a small stand-in for
Asterisk's side of `AGI(agi://...)` drives the real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from hub.voice.agi import Agi, AgiError, AgiHangup, AgiServer, parse_reply
from hub.voice.callbacks import caller_numbers, endpoint_of

Reply = Callable[[str], str]


def ok(_: str) -> str:
    return "200 result=1\n"


async def asterisk(port: int, script: str, reply: Reply = ok, **headers: str) -> list[str]:
    """Play Asterisk: send the headers, answer every command with `reply`, return them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = {"agi_network": "yes", "agi_network_script": script,
            "agi_channel": "PJSIP/trunk-0000002a", "agi_callerid": "9779812345600", **headers}
    writer.write("".join(f"{k}: {v}\n" for k, v in head.items()).encode() + b"\n")
    commands = []
    async with asyncio.timeout(10):
        while line := (await reader.readline()).decode().strip():
            commands.append(line)
            writer.write(reply(line).encode())
    writer.close()
    return commands


class Seen:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.errors: list[Exception] = []
        self.release = asyncio.Event()


@pytest.fixture
async def served() -> AsyncIterator[tuple[AgiServer, Seen]]:
    seen = Seen()

    async def echo(agi: Agi) -> None:
        seen.calls.append(agi.headers["agi_callerid"])
        await agi.set_variable("CALLER", agi.headers["agi_callerid"])

    async def play(agi: Agi) -> None:
        try:
            digit, endpos = await agi.stream_file("/x/message", "9")
            seen.calls.append(f"{digit}:{endpos}")
        except AgiError as exc:
            seen.errors.append(exc)
            raise

    async def hold(agi: Agi) -> None:
        await seen.release.wait()

    async def broken(agi: Agi) -> None:
        raise RuntimeError("a bug in one route")

    server = AgiServer({"echo": echo, "play": play, "hold": hold, "broken": broken},
                       max_calls=3, header_timeout_s=1.0)
    await server.start("127.0.0.1", 0)
    yield server, seen
    seen.release.set()
    await server.close()


async def test_early_disconnects_and_stalls_never_block_the_loop_or_other_calls(
    served: tuple[AgiServer, Seen],
) -> None:
    server, seen = served
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
    tick_task = asyncio.create_task(ticker())
    _, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.close()  # no headers at all
    _, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(b"agi_network: yes\nagi_network_script: echo\nagi_chan")
    await w.drain()
    w.close()  # half a header line, then EOF (panoramisk's loop spins here)
    stalled_r, stalled_w = await asyncio.open_connection("127.0.0.1", server.port)
    stalled_w.write(b"agi_network: yes\nagi_network_script: echo\n")
    await stalled_w.drain()
    started = time.monotonic()
    await asyncio.sleep(0.3)
    assert await asterisk(server.port, "echo", agi_callerid="+1") == ['SET VARIABLE CALLER "+1"']
    assert seen.calls == ["+1"]
    assert ticks >= 15  # the loop kept running all along
    async with asyncio.timeout(3):
        assert await stalled_r.read() == b""  # the stalled client is dropped at the limit
    assert 0.9 <= time.monotonic() - started <= 2.0
    assert server.active == 0
    stalled_w.close()
    tick_task.cancel()


async def test_hangup_dead_channel_and_route_errors_end_only_that_call(
    served: tuple[AgiServer, Seen],
) -> None:
    server, seen = served
    await asterisk(server.port, "play", lambda _: "HANGUP\n")
    await asterisk(server.port, "play", lambda _: "511 Command Not Permitted on a dead channel\n")
    await asterisk(server.port, "play", lambda _: "200 result=-1 endpos=1234\n")
    await asterisk(server.port, "broken")
    assert [type(e) for e in seen.errors] == [AgiHangup] * 3
    await asterisk(server.port, "play", lambda _: "200 result=57 endpos=8000\n")
    assert seen.calls == ["9:8000"]  # ASCII 57 is the digit 9
    assert server.active == 0


async def test_unknown_route_fails_cleanly(served: tuple[AgiServer, Seen]) -> None:
    server, seen = served
    commands = await asterisk(server.port, "nosuch?x=1")
    assert commands == ['SET VARIABLE HUB_AGI_ERROR "unknown route nosuch"']
    assert seen.calls == []


async def test_sessions_beyond_the_cap_are_turned_away(served: tuple[AgiServer, Seen]) -> None:
    server, seen = served
    holders = [asyncio.create_task(asterisk(server.port, "hold")) for _ in range(3)]
    while server.active < 3:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    async with asyncio.timeout(2):
        assert await reader.read() == b""  # closed at once, no headers read
    writer.close()
    seen.release.set()
    await asyncio.gather(*holders)
    assert await asterisk(server.port, "echo") == ['SET VARIABLE CALLER "9779812345600"']


def test_replies_are_parsed_with_their_fields() -> None:
    reply = parse_reply("200 result=0 endpos=24000")
    assert (reply.code, reply.result, reply.fields) == (200, "0", {"endpos": "24000"})
    assert parse_reply("200 result= (timeout)").result == ""
    assert parse_reply("200 result=1 (speech)").data == "speech"
    for bad in ("HANGUP", "511 Command Not Permitted on a dead channel", "200 result=1 (hangup)"):
        with pytest.raises(AgiHangup):
            parse_reply(bad)
    for bad in ("510 Invalid or unknown command", "520-Invalid command syntax.", "garbage"):
        with pytest.raises(AgiError):
            parse_reply(bad)


@pytest.mark.parametrize(("raw", "e164"), [
    ("+9779812345600", "+9779812345600"), ("9779812345600", "+9779812345600"),
    ("009779812345600", "+9779812345600"), ("+1 (415) 555-0100", "+14155550100"),
    ("anonymous", ""), ("", ""), ("12", ""),
])
def test_caller_numbers_are_normalised(raw: str, e164: str) -> None:
    assert caller_numbers(raw)[0] == e164


def test_the_trunk_is_the_channel_endpoint() -> None:
    assert endpoint_of("PJSIP/trunk-0000002a") == "trunk"
    assert endpoint_of("PJSIP/my-carrier-00000001") == "my-carrier"
    assert endpoint_of("Local/s@hub-lookup-00000001;2") is None
    assert endpoint_of("") is None
