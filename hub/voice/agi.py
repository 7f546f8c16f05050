"""A small FastAGI server: Asterisk's `AGI(agi://host:port/<route>)` connects here.

The session protocol: Asterisk sends `agi_*: value` header lines ending with a blank line,
then the server sends one command per line and reads one reply line per command
(`200 result=... [(data)] [key=value]`, `100 Trying`, `510`/`511`/`520 ...`, or `HANGUP`
when the channel hangs up). Replies are parsed with panoramisk's `parse_agi_result`.

panoramisk's own `fast_agi.Application` is not used: its header loop keeps calling
`reader.read()` after EOF without ever yielding, so a client that disconnects before the
blank line freezes the event loop. Here the headers are read line by line under a time
and size limit, EOF anywhere ends that session only, the number of sessions is capped,
and a route's error is logged and never reaches the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from panoramisk.utils import parse_agi_result, re_kv

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 5.0     # from connect to the blank line ending the headers
HEADER_MAX_LINES = 200
LINE_MAX_BYTES = 8192
COMMAND_TIMEOUT_S = 30.0   # a reply to a command that plays nothing
HANGUP = "HANGUP"
DIGITS = "0123456789*#"


class AgiError(Exception):
    """An AGI command failed; the message carries Asterisk's reply."""


class AgiHangup(AgiError):
    """The channel hung up (or the connection closed): nothing more can be done on it."""


@dataclass(frozen=True)
class Reply:
    """One parsed reply line: `result` ('' when absent), its `(data)` and other key=values."""

    line: str
    code: int
    result: str = ""
    data: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def parse_reply(line: str) -> Reply:
    """A reply line as a `Reply`; raises `AgiHangup` for a hang-up, `AgiError` for errors."""
    if line == HANGUP:
        raise AgiHangup("the channel hung up")
    if not line[:3].isdigit():
        raise AgiError(f"not an AGI reply: {line[:100]!r}")
    if line.startswith("511"):  # Command Not Permitted on a dead channel
        raise AgiHangup(line)
    parsed = parse_agi_result(line)
    found = {key: (value, data) for key, value, data in re_kv.findall(line[4:])}
    result, data = found.pop("result", ("", ""))
    reply = Reply(line, int(line[:3]), result, data, {k: v for k, (v, _) in found.items()})
    if parsed.get("error") == "AGIResultHangup":
        raise AgiHangup(line)
    if reply.code != 200 and reply.code != 100:
        raise AgiError(line)
    return reply


async def read_headers(reader: asyncio.StreamReader, timeout_s: float = HEADER_TIMEOUT_S
                       ) -> dict[str, str]:
    """The `agi_*` headers up to the blank line. Raises `AgiHangup` on EOF before it and
    `TimeoutError` when they take longer than `timeout_s` (a stalled client)."""
    headers: dict[str, str] = {}
    async with asyncio.timeout(timeout_s):
        for _ in range(HEADER_MAX_LINES):
            raw = await reader.readline()
            if not raw.endswith(b"\n"):  # EOF (possibly after a partial line)
                raise AgiHangup(f"connection closed after {len(headers)} header lines")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                return headers
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip()] = value.strip()
    raise AgiError(f"more than {HEADER_MAX_LINES} header lines")


class Agi:
    """One AGI session: the channel's headers and its command channel."""

    def __init__(self, headers: dict[str, str], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.headers = headers
        self.reader = reader
        self.writer = writer
        self.hung_up = False

    @property
    def route(self) -> str:
        script = self.headers.get("agi_network_script", "")
        return script.split("?", 1)[0].strip("/")

    @property
    def args(self) -> list[str]:
        found, i = [], 1
        while f"agi_arg_{i}" in self.headers:
            found.append(self.headers[f"agi_arg_{i}"])
            i += 1
        return found

    async def command(self, text: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Reply:
        """Send one command and return its final reply (after any `100 Trying`)."""
        if self.hung_up:
            raise AgiHangup("the channel hung up")
        try:
            self.writer.write(text.encode() + b"\n")
            async with asyncio.timeout(timeout_s):
                await self.writer.drain()
                while True:
                    raw = await self.reader.readline()
                    if not raw.endswith(b"\n"):
                        raise AgiHangup("the connection closed")
                    reply = parse_reply(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    if reply.code != 100:
                        return reply
        except AgiHangup:
            self.hung_up = True
            raise
        except AgiError as exc:
            if str(exc).startswith("520-"):  # a usage message follows: skip it
                await self._skip_usage()
            raise
        except (ConnectionError, TimeoutError) as exc:
            self.hung_up = True
            raise AgiHangup(f"{text.split()[0]}: {type(exc).__name__}") from exc

    async def _skip_usage(self) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                while (raw := await self.reader.readline()) and not raw.startswith(b"520 "):
                    pass

    async def answer(self) -> None:
        await self.command("ANSWER")

    async def stream_file(self, name: str, escape: str = "", timeout_s: float = 600.0
                          ) -> tuple[str, int]:
        """Play `name` (a sound without extension). Returns the digit pressed ('' for none)
        and `endpos`, the sample where playback stopped."""
        reply = await self.command(f'STREAM FILE {name} "{escape}"', timeout_s)
        if reply.result == "-1":
            raise AgiHangup(reply.line)
        if reply.fields.get("endpos") == "0" and reply.result == "0":
            log.info("agi: %s could not be played (endpos=0)", name)
        return _digit(reply.result), int(reply.fields.get("endpos", "0") or 0)

    async def get_data(self, name: str, timeout_ms: int, max_digits: int) -> str:
        """Play `name` and collect up to `max_digits` digits; '' if none came in time."""
        reply = await self.command(f"GET DATA {name} {timeout_ms} {max_digits}",
                                   timeout_ms / 1000 + 600.0)
        if reply.result == "-1":
            raise AgiHangup(reply.line)
        return reply.result if reply.result and set(reply.result) <= set(DIGITS) else ""

    async def set_variable(self, name: str, value: str) -> None:
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        await self.command(f'SET VARIABLE {name} "{quoted}"')

    async def verbose(self, message: str) -> None:
        await self.command(f'VERBOSE "{message.replace(chr(34), chr(39))}" 1')


def _digit(result: str) -> str:
    """STREAM FILE's result is the ASCII code of the digit pressed, 0 for none."""
    code = int(result) if result.isdigit() else 0
    return chr(code) if code > 0 else ""


Route = Callable[[Agi], Awaitable[None]]


class AgiServer:
    """Routes by `agi_network_script`; at most `max_calls` sessions at once."""

    def __init__(self, routes: dict[str, Route], max_calls: int,
                 header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
        self.routes = routes
        self.max_calls = max_calls
        self.header_timeout_s = header_timeout_s
        self.active = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._client, host, port,
                                                 limit=LINE_MAX_BYTES)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self.active >= self.max_calls:
            log.warning("agi: %d sessions already; turning %s away", self.active, peer)
            writer.close()
            return
        self.active += 1
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self._session(reader, writer, peer)
        finally:
            self.active -= 1
            if task is not None:
                self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       peer: object) -> None:
        try:
            headers = await read_headers(reader, self.header_timeout_s)
        except (AgiError, TimeoutError, ConnectionError, ValueError) as exc:
            log.info("agi: %s sent no complete headers: %s", peer,
                     "timed out" if isinstance(exc, TimeoutError) else exc)
            return
        agi = Agi(headers, reader, writer)
        route = self.routes.get(agi.route)
        if route is None:
            log.warning("agi: no route %r (from %s, channel %s)", agi.route, peer,
                        headers.get("agi_channel"))
            with contextlib.suppress(AgiError):
                await agi.set_variable("HUB_AGI_ERROR", f"unknown route {agi.route}"[:100])
            return
        try:
            await route(agi)
        except AgiHangup as exc:
            log.info("agi: %s on %s ended by a hang-up: %s", agi.route,
                     headers.get("agi_channel"), exc)
        except Exception:  # one call's trouble never stops the server
            log.exception("agi: route %s failed on %s", agi.route, headers.get("agi_channel"))
