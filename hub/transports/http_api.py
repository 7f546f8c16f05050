"""The generic HTTP API transport (`type: "api"`): local SMS gateways and any REST
provider. URL, method, headers (write-only: they usually carry credentials) and a JSON or
form body templated per recipient (see `templating.py`); optional bulk mode, one request
per batch; success by status code and an optional JSON path/value; the provider's
message id by JSON path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from hub.addresses import normalize_phone
from hub.config import Settings
from hub.instruction import TransportPart
from hub.net import BlockedURL, Guard, check_url
from hub.transports.base import Recipient, Result
from hub.transports.common import (
    RESPONSE_MAX_CHARS,
    http_failure,
    http_with_limits,
    over_cap,
    unreachable,
)
from hub.transports.limits import Limiter
from hub.transports.templating import json_path, render, render_each, valid_path

BULK_WAIT_S = 0.05  # how long a bulk batch waits for company


class Success(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: list[int] = Field(default_factory=lambda: list(range(200, 300)))
    path: str | None = None
    equals: Any = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not valid_path(v):
            raise ValueError("a JSON path such as $.status or $.results[0].ok")
        return v


class Bulk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max: int = Field(default=100, ge=2, le=10_000)


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    body_type: Literal["json", "form"] = Field(default="json", alias="bodyType")
    bulk: Bulk | None = None
    success: Success = Field(default_factory=Success)
    id_path: str | None = Field(default=None, alias="idPath")
    mps: float | None = Field(default=None, gt=0)
    daily_cap: int | None = Field(default=None, ge=1, alias="dailyCap")
    timeout_s: float = Field(default=15.0, gt=0, alias="timeoutS")


class ApiSpec:
    type = "api"
    provider = "http"
    config_model = ApiConfig
    secret_fields = frozenset({"headers"})
    url_fields = ("url",)  # checked by the guard at registration (and when connecting)

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        return []  # what the provider needs is in the body template

    def normalize_address(self, address: str, region: str | None = None) -> str:
        text = address.strip()
        if text.startswith("+") or region:
            return normalize_phone(text, region)
        if not text:
            raise ValueError("must not be empty")
        return text

    @asynccontextmanager
    async def open(self, config: Mapping[str, Any], content: Mapping[str, Any],
                   settings: Settings, transport_id: str) -> AsyncIterator[ApiSender]:
        cfg = ApiConfig.model_validate(config)
        async with http_with_limits(settings, transport_id, cfg.timeout_s, cfg.mps,
                                    cfg.daily_cap) as (http, limiter):
            sender = ApiSender(cfg, content, http, limiter, Guard.of(settings))
            if cfg.bulk is not None:  # enough sends in flight to fill a batch
                sender.concurrency = max(settings.send_concurrency, cfg.bulk.max)
            try:
                yield sender
            finally:
                await sender.flush()


class ApiSender:
    def __init__(self, cfg: ApiConfig, content: Mapping[str, Any], http: aiohttp.ClientSession,
                 limiter: Limiter, guard: Guard) -> None:
        self.cfg = cfg
        self.guard = guard
        self.http = http
        self.limiter = limiter
        self.content = content
        self.batch: list[tuple[Recipient, asyncio.Future[Result]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.concurrency: int | None = None

    def values(self, recipient: Recipient) -> dict[str, Any]:
        return {"address": recipient.address, "message": self.content.get("message"),
                "subject": self.content.get("subject"),
                "extras": self.content.get("extras") or {}, "attempt": recipient.attempt_id}

    async def send(self, recipient: Recipient) -> Result:
        wait_s = await self.limiter.acquire()
        if wait_s is not None:
            return over_cap(self.limiter, wait_s)
        if self.cfg.bulk is None:
            [result] = await self._request([recipient])
            return result
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.batch.append((recipient, future))
        if len(self.batch) >= self.cfg.bulk.max:
            await self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(
                BULK_WAIT_S, lambda: asyncio.ensure_future(self.flush()))
        return await future

    async def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.batch = self.batch, []
        if not batch:
            return
        results = await self._request([r for r, _ in batch])
        for (_, future), result in zip(batch, results, strict=True):
            with suppress(asyncio.InvalidStateError):
                future.set_result(result)

    async def _request(self, recipients: list[Recipient]) -> list[Result]:
        cfg = self.cfg
        if cfg.bulk is None:
            body = render(cfg.body, self.values(recipients[0]))
        else:
            body = render_each(cfg.body, [self.values(r) for r in recipients])
        kwargs: dict[str, Any] = {"headers": cfg.headers}
        if cfg.method == "GET":
            kwargs["params"] = {k: str(v) for k, v in (body or {}).items()}
        elif cfg.body_type == "form":
            kwargs["data"] = {k: str(v) for k, v in (body or {}).items()}
        else:
            kwargs["json"] = body
        try:  # the template filled in (its host was checked at registration)
            url = URL(str(render(cfg.url, self.values(recipients[0]))))
        except ValueError:
            return [Result("permanent_failure",
                           error="the API url is not a valid URL once filled in")] * len(recipients)
        status = 0
        try:
            check_url(url, self.guard)
            async with self.http.request(cfg.method, url, allow_redirects=False,
                                         **kwargs) as resp:
                text = await resp.text()
                if resp.status not in cfg.success.status:
                    failure = http_failure(resp.status, text, resp.headers.get("Retry-After"),
                                           "the API")
                    return [failure] * len(recipients)
                status = resp.status
                document = await resp.json(content_type=None) if text.strip() else None
        except (BlockedURL, aiohttp.ClientError, OSError, TimeoutError) as exc:
            return [unreachable(exc, "the API")] * len(recipients)
        except ValueError:  # the answer is not JSON (the URL was checked above)
            document = None
        return self._judge(recipients, document, status)

    def _judge(self, recipients: list[Recipient], document: Any, status: int) -> list[Result]:
        cfg = self.cfg
        if cfg.success.path is not None:
            got = json_path(document, cfg.success.path)
            if got != cfg.success.equals:
                error = f"the API answered {cfg.success.path} = {got!r}, not {cfg.success.equals!r}"
                return [Result("permanent_failure", detail={"httpStatus": status,
                                                            "response": _shortened(document)},
                               error=error[:RESPONSE_MAX_CHARS])] * len(recipients)
        ids = json_path(document, cfg.id_path) if cfg.id_path else None
        results = []
        for i, _ in enumerate(recipients):
            ref = ids[i] if isinstance(ids, list) and i < len(ids) else ids
            results.append(Result("delivered", delivered=True,
                                  provider_ref=None if ref is None or isinstance(ref, list)
                                  else str(ref)))
        return results


def _shortened(document: Any) -> Any:
    """A provider's answer as stored for debugging: as is when small, else truncated text."""
    text = json.dumps(document, ensure_ascii=False, default=str)
    return document if len(text) <= RESPONSE_MAX_CHARS else text[:RESPONSE_MAX_CHARS] + "…"


API = ApiSpec()
