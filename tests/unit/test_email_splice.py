"""The email fast path: per-recipient headers spliced in front of a once-serialised shared
part must give the message that building it whole gives, for 8-bit and 7-bit servers."""

from __future__ import annotations

import socket
from email import message_from_bytes, policy
from email.message import EmailMessage

import aiosmtplib
import pytest
from aiosmtplib.email import flatten_message

from hub.config import Settings
from hub.dev import smtp
from hub.net import Guard
from hub.transports.base import Recipient
from hub.transports.email import EmailConfig, SmtpSender, local_hostname
from hub.transports.smtp_pool import Connections


class Server:
    def __init__(self, eight_bit: bool) -> None:
        self.eight_bit = eight_bit

    def supports_extension(self, name: str) -> bool:
        return self.eight_bit and name.upper() == "8BITMIME"


def sender() -> SmtpSender:
    cfg = EmailConfig.model_validate({"host": "127.0.0.1", "from": "Hub <hub@example.com>"})
    content = {"subject": "Grüße " + "long " * 30, "message": "héllo\n.a dot line\nbye\n",
               "extras": {"html": "<p>héllo</p>", "replyTo": ["r@example.com"]}}
    return SmtpSender(cfg, content, [], 4, Guard.of(Settings()), Connections())


def parsed(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize("eight_bit", [True, False])
@pytest.mark.parametrize("role", ["to", "bcc"])
def test_a_spliced_message_is_the_built_message(eight_bit: bool, role: str) -> None:
    s = sender()
    who = Recipient(delivery_id=1, attempt_id="a-1", attempt=1, address="x@example.com",
                    role=role)
    _, _, raw, options = s._message(who, Server(eight_bit))  # type: ignore[arg-type]
    whole = flatten_message(s.build(who), cte_type="8bit" if eight_bit else "7bit")
    assert options == (["BODY=8BITMIME"] if eight_bit else [])
    got, want = parsed(raw), parsed(whole)
    assert sorted(got.keys()) == sorted(want.keys())
    for name in ("To", "From", "Reply-To", "Subject", "Message-ID", "X-Hub-Copy"):
        assert got[name] == want[name], name
    assert got["Message-ID"] == "<a-1@connect-hub>" and got["To"] == "x@example.com"
    for kind in ("plain", "html"):
        got_part, want_part = got.get_body((kind,)), want.get_body((kind,))
        assert got_part is not None and want_part is not None
        assert got_part.get_content() == want_part.get_content()
        assert got_part["Content-Transfer-Encoding"] == want_part["Content-Transfer-Encoding"]
    if not eight_bit:
        assert raw.isascii()  # a 7-bit server never gets an 8-bit byte


def test_each_message_gets_its_own_headers_only() -> None:
    s = sender()
    one = Recipient(delivery_id=1, attempt_id="a-1", attempt=1, address="one@example.com")
    two = Recipient(delivery_id=2, attempt_id="a-2", attempt=1, address="two@example.com")
    _, _, first, _ = s._message(one, Server(True))  # type: ignore[arg-type]
    _, _, second, _ = s._message(two, Server(True))  # type: ignore[arg-type]
    assert b"one@example.com" not in second and b"a-1@" not in second
    assert parsed(first)["To"] == "one@example.com" and parsed(second)["To"] == "two@example.com"
    assert parsed(second)["X-Hub-Copy"] is None


async def test_the_ehlo_name_is_looked_up_once_per_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiosmtplib looks the host's name up (`socket.getfqdn`, ~3 ms, in a thread) for every
    connection it opens. Three senders with their own connections (as outside a worker):
    three connections, at most one lookup, and every message delivered."""
    looked_up = []
    real = aiosmtplib.SMTP._get_default_local_hostname

    async def counting(self: aiosmtplib.SMTP) -> str:
        looked_up.append(self)
        return await real(self)

    monkeypatch.setattr(aiosmtplib.SMTP, "_get_default_local_hostname", counting)
    controller, sink = smtp.start()
    try:
        cfg = EmailConfig.model_validate({"host": "127.0.0.1", "port": controller.port,
                                          "from": "hub@example.com"})
        for i in range(3):
            own = Connections()
            s = SmtpSender(cfg, {"subject": "S", "message": "M"}, [], 1,
                           Guard.of(Settings(allow_private_urls=True)), own)
            result = await s.send(Recipient(delivery_id=i, attempt_id=f"a-{i}", attempt=1,
                                            address=f"x{i}@example.com"))
            await own.close()
            assert result.outcome == "delivered", result
    finally:
        controller.stop()
    assert len(sink.received) == 3
    assert looked_up == []  # the name came from the process's one lookup
    assert await local_hostname() == socket.getfqdn()
