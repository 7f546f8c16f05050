"""SMS and WhatsApp through Twilio's Messages API with the official `twilio` library
(its asyncio HTTP client). A message Twilio accepted waits for its status callback
(`POST /v1/callbacks/twilio/{transport id}`, signature-checked) before it is final; past
`receiptTimeoutS` without one it counts as delivered, unconfirmed."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, model_validator
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from hub.addresses import normalize_phone
from hub.config import Settings
from hub.errors import detail
from hub.instruction import TransportPart
from hub.net import BlockedURL, Guard, guarded_session, scrub
from hub.transports.base import Recipient, Result
from hub.transports.common import ERROR_BODY_MAX_CHARS, limiter_for, over_cap, unreachable
from hub.transports.limits import Limiter
from hub.transports.segments import segments

# Twilio error codes that another attempt cannot fix.
PERMANENT_CODES = frozenset({
    21211, 21212, 21214, 21217, 21401, 21408, 21421, 21601, 21602, 21604, 21606, 21608,
    21610, 21612, 21614, 21617, 21635, 63003, 63015, 63016, 63018,
    30002, 30004, 30005, 30006, 30007, 30034,
})
UNSUBSCRIBED = 21610
DELIVERED_STATUSES = frozenset({"delivered", "read"})
FAILED_STATUSES = frozenset({"undelivered", "failed"})


class TwilioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    account_sid: str = Field(alias="accountSid", pattern=r"^AC[0-9a-zA-Z]{32}$")
    auth_token: str = Field(alias="authToken", min_length=8)
    from_: str | None = Field(default=None, alias="from")
    messaging_service_sid: str | None = Field(default=None, alias="messagingServiceSid")
    base_url: str | None = Field(default=None, alias="baseUrl")
    receipt_timeout_s: float = Field(default=3600.0, gt=0, alias="receiptTimeoutS")
    mps: float | None = Field(default=None, gt=0)
    daily_cap: int | None = Field(default=None, ge=1, alias="dailyCap")
    default_region: str | None = Field(default=None, alias="defaultRegion")
    timeout_s: float = Field(default=15.0, gt=0, alias="timeoutS")

    @model_validator(mode="after")
    def _sender(self) -> TwilioConfig:
        if not (self.from_ or self.messaging_service_sid):
            raise ValueError("from or messagingServiceSid is required")
        return self


class _GuardedClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The library's asyncio client on a guarded session (no redirects followed), sending
    to `base_url` instead of api.twilio.com when one is configured (a local fake)."""

    def __init__(self, base_url: str | None, timeout_s: float, guard: Guard) -> None:
        super().__init__(pool_connections=False, timeout=timeout_s)
        self.session = guarded_session(guard)
        self._base = base_url.rstrip("/") if base_url else None

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if self._base:
            url = re.sub(r"^https://[^/]+", self._base, url)
        return await super().request(method, url, *args, **kwargs)


class TwilioSpec:
    provider = "twilio"
    config_model = TwilioConfig
    secret_fields = frozenset({"authToken"})
    url_fields = ("baseUrl",)  # checked by the guard at registration

    def __init__(self, type_: str) -> None:
        self.type = type_
        self.whatsapp = type_ == "whatsapp"

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        extras = part.extras
        if not part.message and not extras.get("contentSid"):
            return [detail(["transport", "message"],
                           "required (or a template: extras.contentSid)")]
        variables = extras.get("contentVariables")
        if variables is not None and not isinstance(variables, dict):
            return [detail(["transport", "extras", "contentVariables"], "must be an object")]
        media = extras.get("mediaUrl")
        if media is not None and not isinstance(media, (str, list)):
            return [detail(["transport", "extras", "mediaUrl"], "a URL or a list of URLs")]
        if isinstance(media, list):
            return [detail(["transport", "extras", "mediaUrl", i], "must be a URL")
                    for i, url in enumerate(media) if not isinstance(url, str)]
        return []

    def content_urls(self, part: TransportPart) -> list[tuple[list[str | int], str]]:
        """URLs in the content that Twilio will fetch (checked by the guard at submission)."""
        media = part.extras.get("mediaUrl")
        loc: list[str | int] = ["transport", "extras", "mediaUrl"]
        if isinstance(media, str):
            return [(loc, media)]
        if isinstance(media, list):
            return [([*loc, i], url) for i, url in enumerate(media) if isinstance(url, str)]
        return []

    def normalize_address(self, address: str, region: str | None = None) -> str:
        return normalize_phone(address.removeprefix("whatsapp:"), region)

    @asynccontextmanager
    async def open(self, config: Mapping[str, Any], content: Mapping[str, Any],
                   settings: Settings, transport_id: str) -> AsyncIterator[TwilioSender]:
        cfg = TwilioConfig.model_validate(config)
        http = _GuardedClient(cfg.base_url, cfg.timeout_s, Guard.of(settings))
        callback = f"{settings.base_url}/v1/callbacks/twilio/{transport_id}"
        try:
            async with limiter_for(settings, transport_id, cfg.mps, cfg.daily_cap) as limiter:
                yield TwilioSender(cfg, content, Client(cfg.account_sid, cfg.auth_token,
                                                        http_client=http),
                                   callback, limiter, self.whatsapp)
        finally:
            await http.close()


class TwilioSender:
    def __init__(self, cfg: TwilioConfig, content: Mapping[str, Any], client: Client,
                 callback: str, limiter: Limiter, whatsapp: bool) -> None:
        self.cfg = cfg
        self.client = client
        self.limiter = limiter
        self.prefix = "whatsapp:" if whatsapp else ""
        extras = content.get("extras") or {}
        self.body = content.get("message")
        self.params: dict[str, Any] = {"status_callback": callback}
        if cfg.messaging_service_sid:
            self.params["messaging_service_sid"] = cfg.messaging_service_sid
        else:
            self.params["from_"] = self.prefix + (cfg.from_ or "")
        if self.body:
            self.params["body"] = self.body
        media = extras.get("mediaUrl")
        if media:
            self.params["media_url"] = [media] if isinstance(media, str) else list(media)
        if extras.get("contentSid"):
            self.params["content_sid"] = extras["contentSid"]
            self.params["content_variables"] = json.dumps(extras.get("contentVariables") or {})
        self.info = segments(self.body) if self.body else {}

    async def send(self, recipient: Recipient) -> Result:
        wait_s = await self.limiter.acquire()
        if wait_s is not None:
            return over_cap(self.limiter, wait_s)
        try:
            msg = await self.client.messages.create_async(
                to=self.prefix + recipient.address, **self.params)
        except TwilioRestException as exc:
            return classify_error(exc.status, exc.code, exc.msg)
        except (BlockedURL, aiohttp.ClientError, OSError, TimeoutError) as exc:
            return unreachable(exc, "Twilio")
        return Result("sent", provider_ref=msg.sid,
                      detail={"twilioStatus": msg.status, **self.info,
                              **_billed_segments(msg.num_segments)},
                      receipt_s=self.cfg.receipt_timeout_s)


def _billed_segments(answered: object) -> dict[str, int]:
    """The segment count Twilio answered (what it bills; usage sums it), when it gave one;
    otherwise the count computed from the body stays."""
    text = str(answered) if answered is not None else ""
    return {"segments": int(text)} if text.isdigit() and int(text) > 0 else {}


def classify_error(status: int, code: int | None, message: str) -> Result:
    info = {"httpStatus": status, "errorCode": code}
    error = f"Twilio {code or status}: {scrub(str(message))[:ERROR_BODY_MAX_CHARS]}"
    if code == UNSUBSCRIBED:
        return Result("suppressed", detail=info, error=error)
    if status == 429 or status >= 500:
        return Result("temporary_failure", retryable=True, detail=info, error=error)
    return Result("permanent_failure", detail=info, error=error)


def receipt_result(status: str, code: str | None, message: str | None) -> Result | None:
    """A status callback as a result; None for intermediate states (queued, sent, ...)."""
    if status in DELIVERED_STATUSES:
        return Result("delivered", delivered=True, detail={"twilioStatus": status})
    if status not in FAILED_STATUSES:
        return None
    number = int(code) if code and code.isdigit() else None
    info = {"twilioStatus": status, "errorCode": number}
    error = f"Twilio {status}: error {code}" + (f" ({message})" if message else "")
    retryable = number is None or number not in PERMANENT_CODES
    return Result(status, retryable=retryable, detail=info, error=error)


SMS = TwilioSpec("sms")
WHATSAPP = TwilioSpec("whatsapp")
