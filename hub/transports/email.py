"""Email over SMTP (aiosmtplib): one message per recipient, connections reused (and kept
between sessions by a worker: `smtp_pool`).

Each delivery gets its own message, addressed to it alone: an audience member, or the
session's single copy for a `cc`/`bcc` address (those are deliveries of the session, so
they are sent once per session, suppression-checked, retried and counted like the rest).
Attachments are fetched once per session and kept in PostgreSQL by content hash; a fetch
that fails raises `FetchError` from `open()` (transient or not) so the engine can handle it
for the whole session. Values that would break a header are refused at validation.

SMTP 4xx and connection trouble are transient (retried); 5xx is permanent, with the
server's reply stored. Each message's Message-ID names its attempt, so a resend after a
crash can be recognised at the receiving side.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from email.message import EmailMessage, MIMEPart
from email.utils import formatdate
from typing import Any, Literal, cast

import aiosmtplib
from aiosmtplib.email import extract_sender, flatten_message
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from hub.addresses import normalize_email
from hub.config import Settings
from hub.constants import O_DELIVERED, O_PERMANENT, O_TEMPORARY
from hub.errors import detail
from hub.instruction import TransportPart
from hub.net import (
    BlockedURL,
    FetchError,
    Guard,
    fetch,
    guarded_session,
    open_guarded_socket,
    redact,
    shown_url,
)
from hub.store import blobs, db
from hub.store.blobs import Attachment
from hub.transports import smtp_pool
from hub.transports.base import Recipient, Result

MESSAGE_ID_DOMAIN = "connect-hub"


# Characters that end or corrupt a header line: C0 controls but tab, DEL, C1 controls and
# the Unicode line separators (Python's email package splits header lines on all of them).
_HEADER_BREAKERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NOT_IN_HEADER = "must not contain line breaks or control characters (header injection)"


def _header_safe(value: str) -> bool:
    return _HEADER_BREAKERS.search(value) is None


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

    @field_validator("from_")
    @classmethod
    def _one_header_line(cls, value: str) -> str:
        if not _header_safe(value):
            raise ValueError(_NOT_IN_HEADER)
        return value


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


class EmailSpec:
    type = "email"
    provider = "smtp"
    config_model = EmailConfig
    secret_fields = frozenset({"password"})
    host_fields = ("host",)  # checked by the guard at registration (and when connecting)

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        problems = []
        for field in ("subject", "message"):
            if not getattr(part, field):
                problems.append(detail(["transport", field], "required for email"))
        if part.subject and not _header_safe(part.subject):
            problems.append(detail(["transport", "subject"], _NOT_IN_HEADER))
        for key in ("cc", "bcc", "replyTo"):
            for i, addr in enumerate(_as_list(part.extras.get(key))):
                loc: list[str | int] = ["transport", "extras", key, i]
                if not _header_safe(addr):
                    problems.append(detail(loc, _NOT_IN_HEADER))
                    continue
                try:
                    normalize_email(addr)
                except ValueError as exc:
                    problems.append(detail(loc, str(exc)))
        for i, att in enumerate(part.extras.get("attachments") or []):
            loc = ["transport", "extras", "attachments", i]
            if not isinstance(att, dict) or not isinstance(att.get("url"), str):
                problems.append(detail(loc, "expected {\"url\": ..., \"filename\"?: ...}"))
                continue
            name = att.get("filename")
            if name is not None and not isinstance(name, str):
                problems.append(detail([*loc, "filename"], "must be a string"))
            elif name is not None and not _header_safe(name):
                problems.append(detail([*loc, "filename"], _NOT_IN_HEADER))
        return problems

    def content_urls(self, part: TransportPart) -> list[tuple[list[str | int], str]]:
        """Attachment URLs (checked by the guard at submission, fetched at send time)."""
        found: list[tuple[list[str | int], str]] = []
        for i, att in enumerate(part.extras.get("attachments") or []):
            if isinstance(att, dict) and isinstance(att.get("url"), str):
                found.append((["transport", "extras", "attachments", i, "url"], att["url"]))
        return found

    def copies(self, part: TransportPart, audience: list[str]) -> list[tuple[str, str]]:
        """cc/bcc addresses, normalised, each once, none of the audience (cc first): each
        becomes one delivery of the session (role cc/bcc), not a copy per recipient."""
        taken = set(audience)
        found: dict[str, str] = {}
        for role in ("cc", "bcc"):
            for raw in _as_list(part.extras.get(role)):
                address = normalize_email(raw)  # validated already
                if address not in taken:
                    found.setdefault(address, role)
        return list(found.items())

    def normalize_address(self, address: str, region: str | None = None) -> str:
        return normalize_email(address)

    @asynccontextmanager
    async def open(
        self, config: Mapping[str, Any], content: Mapping[str, Any], settings: Settings,
        transport_id: str,
    ) -> AsyncIterator[SmtpSender]:
        """Raises `FetchError` (`transient` set when a later try may succeed) when the
        session's attachments cannot be fetched; nothing is sent then."""
        cfg = EmailConfig.model_validate(config)
        if cfg.timeout_s is None:
            cfg = cfg.model_copy(update={"timeout_s": settings.smtp_timeout_s})
        attachments = await _session_attachments(content, settings)
        concurrency = min(settings.send_concurrency, cfg.max_connections)
        pools = smtp_pool.KEPT.get()
        async with AsyncExitStack() as stack:
            if pools is None:  # not in a worker's job loop: this batch's own connections
                connections = smtp_pool.Connections()
                stack.push_async_callback(connections.close)
            else:  # the process's, kept between sessions (see `hub.transports.smtp_pool`)
                connections = stack.enter_context(pools.use(
                    transport_id, cfg.model_dump_json(by_alias=True)))
            yield SmtpSender(cfg, content, attachments, concurrency, Guard.of(settings),
                             connections)


async def _session_attachments(
    content: Mapping[str, Any], settings: Settings
) -> list[Attachment]:
    """Fetched by the session's first job and stored by hash; later jobs read the store."""
    wanted = (content.get("extras") or {}).get("attachments") or []
    if not wanted:
        return []
    session_id = content.get("sessionId")
    if session_id is None:  # content of a session stored before sessions carried their id
        return await _fetch_attachments(wanted, settings)
    conn = await db.connect(settings.database_url)
    try:
        return await blobs.session_attachments(
            conn, uuid.UUID(session_id), lambda: _fetch_attachments(wanted, settings))
    finally:
        await conn.close()


async def _fetch_attachments(
    wanted: list[dict[str, Any]], settings: Settings
) -> list[Attachment]:
    found = []
    guard = Guard.of(settings)
    async with guarded_session(guard) as http:
        for i, att in enumerate(wanted):
            url = att["url"]
            try:
                got = await fetch(http, url, allow_private=guard,
                                  max_bytes=settings.fetch_max_bytes,
                                  timeout_s=settings.fetch_timeout_s)
            except FetchError as exc:  # BlockedURL too: never transient
                raise FetchError(f"attachment {i + 1} ({shown_url(url)}): {_reason(exc, url)}",
                                 transient=exc.transient) from None
            name = att.get("filename") or _name_from(got.url)
            ctype = got.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
            found.append(Attachment(name, ctype, got.body))
    return found


def _reason(exc: Exception, url: str) -> str:
    """The error without the URL it names (shown already) or any credential of it."""
    shown = shown_url(url)
    text = str(exc).removeprefix(f"{shown}: ").removeprefix(f"{url}: ")
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return redact(text, url)
    return redact(text, url, parsed.user, parsed.password, parsed.raw_query_string,
                  parsed.raw_fragment)


def _name_from(url: str) -> str:
    name = _HEADER_BREAKERS.sub("", URL(url).name)
    return name or "attachment"


_FQDN: dict[str, str] = {}


async def local_hostname() -> str:
    """This host's name for EHLO (`socket.getfqdn()`, as aiosmtplib picks it), looked up
    once per process: aiosmtplib looks it up in a thread for every connection it opens
    (~3 ms and a thread hop each)."""
    if "name" not in _FQDN:
        _FQDN["name"] = await asyncio.to_thread(socket.getfqdn)
    return _FQDN["name"]


class SmtpSender:
    """Sends through a small pool of SMTP connections (`smtp_pool.Connections`: kept for
    the batch, or in a worker between its sessions).

    One message per delivery, addressed to that delivery only: an audience member
    (role `to`) or the session's single cc/bcc copy (`X-Hub-Copy: cc|bcc`). Everything
    but the per-recipient headers (To, X-Hub-Copy, Date, Message-ID) is built and
    serialised once per job; each message is those few header lines spliced in front of
    the shared bytes. A message with a non-ASCII address (SMTPUTF8) is built whole.
    """

    def __init__(
        self,
        cfg: EmailConfig,
        content: Mapping[str, Any],
        attachments: list[Attachment],
        concurrency: int,
        guard: Guard,
        connections: smtp_pool.Connections,
    ) -> None:
        self._cfg = cfg
        self._guard = guard
        self._content = content
        self._extras = content.get("extras") or {}
        self._attachments = [_attachment_part(a) for a in attachments]
        # Built at the first send, so that a value the message cannot carry fails that
        # recipient's attempt (with the error) rather than the whole job.
        self._shared_msg: EmailMessage | None = None
        self._flat: dict[str, bytes] = {}  # the shared part serialised, per transfer encoding
        self._connections = connections
        self.concurrency = concurrency
        # The sender's own slots, one per pipeline consumer: a send never waits for a
        # connection after the pipeline found its claim safe to send (kept connections are
        # shared between sessions, slots are not).
        self._slots = asyncio.Semaphore(concurrency)

    async def _connect(self) -> aiosmtplib.SMTP:
        """A connection to an address of `host` the guard allows (checked before
        connecting); the host name stays the TLS server name."""
        cfg = self._cfg
        sock = await open_guarded_socket(self._guard, cfg.host, cfg.port, cfg.timeout_s)
        client = aiosmtplib.SMTP(
            hostname=cfg.host, sock=sock, timeout=cfg.timeout_s,
            use_tls=cfg.security == "tls", start_tls=cfg.security == "starttls",
            local_hostname=await local_hostname(),
        )
        connected = False
        try:
            await client.connect()
            connected = True
        finally:
            if not connected:
                sock.close()
        try:
            if cfg.username:
                await client.login(cfg.username, cfg.password or "")
            if client.is_ehlo_or_helo_needed:  # the server's extensions pick the encoding
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()
            raise
        return client

    def _common(self) -> EmailMessage:
        """The part of every message of the session that does not name its recipient."""
        msg = EmailMessage()
        msg["From"] = self._cfg.from_
        if self._extras.get("replyTo"):
            msg["Reply-To"] = ", ".join(_as_list(self._extras["replyTo"]))
        msg["Subject"] = self._content.get("subject") or ""
        msg.set_content(self._content.get("message") or "")
        if self._extras.get("html"):
            msg.add_alternative(str(self._extras["html"]), subtype="html")
        if self._attachments:
            msg.make_mixed()
            for part in self._attachments:
                msg.attach(cast(EmailMessage, part))  # typeshed: any MIMEPart will do
        return msg

    @staticmethod
    def _own_headers(recipient: Recipient) -> list[tuple[str, str]]:
        headers = [("To", recipient.address)]
        if recipient.role != "to":
            headers.append(("X-Hub-Copy", recipient.role))
        headers += [("Date", formatdate(localtime=False)),
                    ("Message-ID", f"<{recipient.attempt_id}@{MESSAGE_ID_DOMAIN}>")]
        return headers

    def build(self, recipient: Recipient) -> EmailMessage:
        """The whole message as one object."""
        msg = self._common()
        for name, value in self._own_headers(recipient):
            msg[name] = value
        return msg

    def _shared(self) -> EmailMessage:
        """The part every message shares, built at the first call."""
        if self._shared_msg is None:
            self._shared_msg = self._common()
        return self._shared_msg

    def _message(self, recipient: Recipient, client: aiosmtplib.SMTP
                 ) -> tuple[str, Recipient, bytes, list[str]]:
        """The envelope sender, the recipient as addressed, the message's bytes and the MAIL
        options, as `send_message` would have made them for this server. An ASCII message
        is its own headers, then the shared part serialised once; one with a non-ASCII
        address (SMTPUTF8) is built whole. A server without SMTPUTF8 gets an address whose
        only non-ASCII part is its domain in the domain's ASCII form (IDNA)."""
        sender = extract_sender(self._shared()) or ""
        eight_bit = client.supports_extension("8BITMIME")
        cte = "8bit" if eight_bit else "7bit"
        options = ["BODY=8BITMIME"] if eight_bit else []
        utf8 = client.supports_extension("smtputf8")
        if not (recipient.address.isascii() or utf8):
            recipient = replace(recipient, address=_ascii_domain(recipient.address))
        if sender.isascii() and recipient.address.isascii():
            flat = self._flat.get(cte)
            if flat is None:
                flat = self._flat[cte] = flatten_message(self._shared(), cte_type=cte)
            head = "".join(f"{name}: {value}\r\n"
                           for name, value in self._own_headers(recipient))
            data = head.encode("ascii") + flat
        else:
            if not utf8:
                raise _NeedsUtf8
            data = flatten_message(self.build(recipient), utf8=True, cte_type=cte)
            options.append("SMTPUTF8")
        if client.supports_extension("size"):  # refused at MAIL when too big, as sendmail did
            options.insert(0, f"SIZE={len(data)}")
        return sender, recipient, data, options

    async def _transmit(self, client: aiosmtplib.SMTP, recipient: Recipient,
                        progress: _Progress) -> str:
        """Send one message on `client`: the server's reply to it. `progress.data_begun`
        is set once the message may have been taken (before that nothing was)."""
        sender, recipient, data, options = self._message(recipient, client)
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        await client.mail(sender, options=options, encoding=encoding)
        await client.rcpt(recipient.address, encoding=encoding)
        progress.data_begun = True
        return (await client.data(data)).message

    async def send(self, recipient: Recipient) -> Result:
        ref = f"<{recipient.attempt_id}@{MESSAGE_ID_DOMAIN}>"
        connections = self._connections
        self._shared()  # built (or failing) before a connection is taken
        async with self._slots:
            fresh = False
            while True:  # at most twice: a kept connection failing before DATA, then a new one
                client: aiosmtplib.SMTP | None = None
                kept, progress = False, _Progress()
                try:
                    client, kept = await connections.take(self._connect, fresh=fresh)
                    reply = await self._transmit(client, recipient, progress)
                except aiosmtplib.SMTPResponseException as exc:  # a refusal (login's too)
                    connections.drop(client)
                    if kept and exc.code in (421, -1) and not progress.data_begun:
                        fresh = True  # the kept connection closed or garbled: not the message's
                        continue
                    return _classify(exc.code, exc.message, ref)
                except _NeedsUtf8:  # nothing was sent; the connection is as it was
                    assert client is not None  # taken before the message was made
                    connections.give(client)
                    return Result(O_PERMANENT, retryable=False, error=(
                        "the SMTP server does not offer SMTPUTF8, which a non-ASCII address"
                        " needs"))
                except BlockedURL as exc:  # nothing was sent: no provider ref
                    return Result(O_PERMANENT, retryable=False, error=f"SMTP server {exc}")
                except smtp_pool.TROUBLE as exc:
                    connections.drop(client)
                    if kept and not progress.data_begun:
                        fresh = True  # a kept connection that had gone: nothing was sent
                        continue
                    return Result(O_TEMPORARY, retryable=True, provider_ref=ref,
                                  error=f"SMTP connection failed: {exc or type(exc).__name__}")
                except BaseException:  # cancelled (or a bug) mid-message: never reuse it
                    connections.drop(client)
                    raise
                connections.give(client)
                return Result(O_DELIVERED, delivered=True, provider_ref=ref,
                              detail={"smtpCode": 250, "smtpReply": reply})


def _ascii_domain(address: str) -> str:
    """`address` with its domain in ASCII (IDNA) when only the domain is not: as it was
    when that cannot be done (the server then cannot take it)."""
    local, at, domain = address.rpartition("@")
    if not (at and local.isascii()):
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address


class _NeedsUtf8(Exception):
    """The message has a non-ASCII address and the server does not offer SMTPUTF8."""


@dataclass
class _Progress:
    data_begun: bool = False


def _attachment_part(att: Attachment) -> MIMEPart:
    """A MIME part encoded (base64) once, then attached to every message of the job."""
    part = MIMEPart()
    maintype, _, subtype = att.content_type.partition("/")
    part.set_content(att.body, maintype=maintype, subtype=subtype or "octet-stream",
                     disposition="attachment", filename=att.filename)
    return part


def _classify(code: int, text: str, ref: str) -> Result:
    info = {"smtpCode": code, "smtpReply": text}
    error = f"SMTP {code} {text}"
    if code == -1 or 400 <= code < 500:  # 4xx, or aiosmtplib's -1 for a reply it could not read
        return Result(O_TEMPORARY, retryable=True, provider_ref=ref, detail=info, error=error)
    return Result(O_PERMANENT, retryable=False, provider_ref=ref, detail=info, error=error)


EMAIL = EmailSpec()
