"""Writes joined per pass of the event loop: what a connection's writer sends while the
loop runs its ready callbacks goes out in one `write` at the end of that pass.

The voice controller sends a call's plays and hang-ups on the ARI websocket, each its own
small frame. Events come from Asterisk in bursts (one read brings several), the handlers
of one burst run in one pass of the loop, and each of their frames used to be its own
system call, and on loopback its own wake-up of Asterisk's reading thread: the socket
writes were the biggest single item of the controller's CPU at a few hundred calls a
second. Joined, a burst's frames cost one write and one wake-up. Nothing waits longer
than the pass it was written in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class CoalescingTransport:
    """Stands in for `transport` in a writer: `write` keeps the data until the loop's
    current pass is over, then everything kept goes out in one write, in order."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._parts: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            asyncio.get_running_loop().call_soon(self.flush)
        self._parts.append(data)

    def flush(self) -> None:
        """Send what is kept now (nothing if the connection is closing: it is lost
        anyway, as a write on a closing transport is)."""
        parts, self._parts = self._parts, []
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def coalesce_writes(ws: Any) -> bool:
    """Join the writes of an aiohttp websocket's writer per pass of the loop; False
    (left as it was) when this aiohttp does not expose its writer's transport."""
    writer: Any = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or not hasattr(transport, "write"):
        log.debug("websocket writes not joined: no writer transport on %r", ws)
        return False
    if not isinstance(transport, CoalescingTransport):
        writer.transport = CoalescingTransport(transport)
    return True
