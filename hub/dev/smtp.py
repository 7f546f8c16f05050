"""A scripted SMTP server (aiosmtpd) that records what it receives.

Scripts map an address to the replies its next RCPT commands get, e.g.
`{"a@x.test": ["451 4.3.0 try later", "451 4.3.0 try later"]}` refuses twice, then
accepts. Addresses whose local part starts with `bounce` get `550 5.1.1 no such user`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    rcpt: str
    message_id: str
    subject: str
    at: float
    message: Message
    raw: bytes = b""  # as received (a non-ASCII header is only readable here)


@dataclass
class SmtpSink:
    scripts: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    refused: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay_s: float = 0.0  # time taken to accept each message, to slow a test down
    greeted: list[Session] = field(default_factory=list)  # a connection's session per EHLO
    quits: int = 0
    in_data: int = 0  # messages whose DATA arrived whole (counted before the reply)

    async def handle_EHLO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.greeted.append(session)
        return responses

    async def handle_QUIT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.lock:
            queue = self.scripts.get(address)
            reply = queue.pop(0) if queue else None
            if reply is None and address.split("@")[0].startswith("bounce"):
                reply = "550 5.1.1 no such user"
            if reply is not None and not reply.startswith("2"):
                self.refused[address].append(time.time())
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self.lock:
            self.in_data += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        content = envelope.content or b""
        raw = content.encode() if isinstance(content, str) else content
        msg = message_from_bytes(raw)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.received.append(Received(rcpt, msg.get("Message-ID", ""),
                                              msg.get("Subject", ""), time.time(), msg, raw))
        return "250 2.0.0 queued"

    def for_address(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.rcpt == address]

    def connections(self) -> int:
        """How many connections greeted the sink."""
        with self.lock:
            return len({id(session) for session in self.greeted})  # each kept alive here

    def duplicates(self) -> dict[str, int]:
        """Recipients that received more than one message, with the count."""
        seen: dict[str, int] = defaultdict(int)
        with self.lock:
            for r in self.received:
                seen[r.rcpt] += 1
        return {a: n for a, n in seen.items() if n > 1}


def start(port: int = 0, host: str = "127.0.0.1", idle_timeout_s: float = 300.0,
          size_limit: int = 33_554_432, smtputf8: bool = True) -> tuple[Controller, SmtpSink]:
    """Start the sink in a background thread; returns the controller (with `.port`). It
    closes a connection left without a command for `idle_timeout_s` (aiosmtpd closes it
without a reply); `smtputf8` offers SMTPUTF8 (non-ASCII addresses)."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink = SmtpSink()
    controller = Controller(sink, hostname=host, port=port or free_port(host), ready_timeout=10,
                            timeout=idle_timeout_s, data_size_limit=size_limit,
                            enable_SMTPUTF8=smtputf8)
    controller.start()
    return controller, sink


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


if __name__ == "__main__":  # a standalone sink for benchmarks: python -m hub.dev.smtp PORT
    import sys

    ctl, _ = start(int(sys.argv[1]) if len(sys.argv) > 1 else 2525)
    print(f"smtp sink on 127.0.0.1:{ctl.port}", flush=True)
    threading.Event().wait()
