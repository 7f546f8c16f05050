"""Writes joined per pass of the event loop: what a connection's writer sends while the
loop runs its ready callbacks goes out in one `write` at the end of that pass.

The voice controller sends a call's plays and hang-ups on its ARI REST websockets, each
its own small frame. Events come from Asterisk in bursts (one read brings several), the
handlers of one burst run in one pass of the loop, and each of their frames used to be
its own system call, and on loopback its own wake-up of Asterisk's reading thread: the
socket writes were the biggest single item of the controller's CPU at a few hundred
calls a second. Joined, a burst's frames cost one write and one wake-up. Nothing waits
longer than the pass it was written in, and a control frame (close, ping, pong) goes out
at once with what was kept before it: a close is followed straight away by closing the
connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)
CONTROL_OPCODES = (0x8, 0x9, 0xA)  # a websocket frame's first byte & 0x0F: close, ping, pong


class CoalescingTransport:
    """Stands in for `transport` in a websocket writer: `write` keeps the data until the
    loop's current pass is over, then everything kept goes out in one write, in order."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._parts: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            asyncio.get_running_loop().call_soon(self.flush)
        self._parts.append(data)
        if len(data) and data[0] & 0x0F in CONTROL_OPCODES:
            self.flush()

    def flush(self) -> None:
        """Send what is kept now (nothing once the connection is lost). A write that fails
        aborts the connection, so that its reader sees it closed and fails the requests
        waiting for answers on it."""
        parts, self._parts = self._parts, []
        if not parts or self._transport.is_closing():
            return
        try:
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        except Exception as exc:  # noqa: BLE001 (whatever the transport raised)
            log.warning("websocket write failed, closing the connection: %s", exc)
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def _writer_transport(ws: Any) -> Any:
    writer: Any = getattr(ws, "_writer", None)
    return getattr(writer, "transport", None)


def coalesce_writes(ws: Any) -> bool:
    """Join the writes of an aiohttp websocket's writer per pass of the loop; False
    (left as it was) when this aiohttp does not expose its writer's transport."""
    transport = _writer_transport(ws)
    if transport is None or not hasattr(transport, "write"):
        log.debug("websocket writes not joined: no writer transport on %r", ws)
        return False
    if not isinstance(transport, CoalescingTransport):
        ws._writer.transport = CoalescingTransport(transport)
    return True


def writable(ws: Any) -> bool:
    """Whether a frame sent on `ws` now would be written (not refused as closing): what
    fails after this was written, and may have reached the other side."""
    transport = _writer_transport(ws)
    return not ws.closed and (transport is None or not transport.is_closing())
