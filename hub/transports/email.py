"""Email over SMTP (aiosmtplib): one message per recipient, connections reused per batch.

SMTP 4xx and connection trouble are transient (retried); 5xx is permanent, with the
server's reply stored. Each message's Message-ID names its attempt, so a resend after a
crash can be recognised at the receiving side.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Literal

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field

from hub.addresses import normalize_email
from hub.config import Settings
from hub.constants import O_DELIVERED, O_PERMANENT, O_TEMPORARY
from hub.errors import detail
from hub.instruction import TransportPart
from hub.net import fetch, guarded_session
from hub.transports.base import Recipient, Result

MESSAGE_ID_DOMAIN = "connect-hub"


class EmailConfig(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    host: str
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    from_: str = Field(alias="from")
    security: Literal["none", "starttls", "tls"] = "none"
    timeout_s: float | None = Field(default=None, gt=0)  # None: HUB_SMTP_TIMEOUT_S
    max_connections: int = Field(default=10, ge=1, le=200)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


class EmailSpec:
    type = "email"
    provider = "smtp"
    config_model = EmailConfig
    secret_fields = frozenset({"password"})

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        problems = []
        for field in ("subject", "message"):
            if not getattr(part, field):
                problems.append(detail(["transport", field], "required for email"))
        for key in ("cc", "bcc", "replyTo"):
            for i, addr in enumerate(_as_list(part.extras.get(key))):
                try:
                    normalize_email(addr)
                except ValueError as exc:
                    problems.append(detail(["transport", "extras", key, i], str(exc)))
        for i, att in enumerate(part.extras.get("attachments") or []):
            if not isinstance(att, dict) or not isinstance(att.get("url"), str):
                problems.append(detail(["transport", "extras", "attachments", i],
                                       "expected {\"url\": ..., \"filename\"?: ...}"))
        return problems

    def normalize_address(self, address: str, region: str | None = None) -> str:
        return normalize_email(address)

    @asynccontextmanager
    async def open(
        self, config: Mapping[str, Any], content: Mapping[str, Any], settings: Settings,
        transport_id: str,
    ) -> AsyncIterator[SmtpSender]:
        cfg = EmailConfig.model_validate(config)
        if cfg.timeout_s is None:
            cfg = cfg.model_copy(update={"timeout_s": settings.smtp_timeout_s})
        attachments = await _fetch_attachments(content, settings)
        sender = SmtpSender(cfg, content, attachments, settings.send_concurrency)
        try:
            yield sender
        finally:
            await sender.close()


async def _fetch_attachments(
    content: Mapping[str, Any], settings: Settings
) -> list[tuple[str, bytes, str]]:
    wanted = (content.get("extras") or {}).get("attachments") or []
    if not wanted:
        return []
    found = []
    async with guarded_session(settings.allow_private_urls) as http:
        for att in wanted:
            got = await fetch(http, att["url"], allow_private=settings.allow_private_urls,
                              max_bytes=settings.fetch_max_bytes, timeout_s=settings.fetch_timeout_s)
            name = att.get("filename") or got.url.rsplit("/", 1)[-1] or "attachment"
            ctype = got.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
            found.append((name, got.body, ctype))
    return found


class SmtpSender:
    """Sends through a small pool of SMTP connections kept open for the whole batch."""

    def __init__(
        self,
        cfg: EmailConfig,
        content: Mapping[str, Any],
        attachments: list[tuple[str, bytes, str]],
        concurrency: int,
    ) -> None:
        self._cfg = cfg
        self._content = content
        self._extras = content.get("extras") or {}
        self._attachments = attachments
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self.concurrency = min(concurrency, cfg.max_connections)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._all: list[aiosmtplib.SMTP] = []

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self._cfg
        client = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.port, timeout=cfg.timeout_s,
            use_tls=cfg.security == "tls", start_tls=cfg.security == "starttls",
        )
        await client.connect()
        if cfg.username:
            await client.login(cfg.username, cfg.password or "")
        self._all.append(client)
        return client

    def build(self, recipient: Recipient) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._cfg.from_
        msg["To"] = recipient.address
        for key, header in (("cc", "Cc"), ("replyTo", "Reply-To")):
            if self._extras.get(key):
                msg[header] = ", ".join(_as_list(self._extras[key]))
        msg["Subject"] = self._content.get("subject") or ""
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = f"<{recipient.attempt_id}@{MESSAGE_ID_DOMAIN}>"
        msg.set_content(self._content.get("message") or "")
        if self._extras.get("html"):
            msg.add_alternative(str(self._extras["html"]), subtype="html")
        for name, body, ctype in self._attachments:
            maintype, _, subtype = ctype.partition("/")
            msg.add_attachment(body, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=name)
        return msg

    async def send(self, recipient: Recipient) -> Result:
        msg = self.build(recipient)
        ref = msg["Message-ID"]
        envelope = [recipient.address, *_as_list(self._extras.get("cc")),
                    *_as_list(self._extras.get("bcc"))]
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                refused, reply = await client.send_message(msg, recipients=envelope)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self._idle.put_nowait(client)  # type: ignore[arg-type]
                first = exc.recipients[0]
                return _classify(first.code, first.message, ref)
            except aiosmtplib.SMTPResponseException as exc:
                if client is not None and client.is_connected:
                    self._idle.put_nowait(client)
                return _classify(exc.code, exc.message, ref)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await _drop(client)
                return Result(O_TEMPORARY, retryable=True, provider_ref=ref,
                              error=f"SMTP connection failed: {exc or type(exc).__name__}")
            self._idle.put_nowait(client)
        if recipient.address in refused:
            code, text = refused[recipient.address]
            return _classify(code, text, ref)
        return Result(O_DELIVERED, delivered=True, provider_ref=ref,
                      detail={"smtpCode": 250, "smtpReply": reply})

    async def close(self) -> None:
        for client in self._all:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()


async def _drop(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        client.close()


def _classify(code: int, text: str, ref: str) -> Result:
    info = {"smtpCode": code, "smtpReply": text}
    error = f"SMTP {code} {text}"
    if 400 <= code < 500:
        return Result(O_TEMPORARY, retryable=True, provider_ref=ref, detail=info, error=error)
    return Result(O_PERMANENT, retryable=False, provider_ref=ref, detail=info, error=error)


EMAIL = EmailSpec()
