"""Slack: post to channels through the Web API (`chat.postMessage`, a bot token) or an
incoming-webhook URL. Audience entries are channel ids (or names). Rate-limit answers
(HTTP 429 with Retry-After, or `ratelimited`) are honoured without spending a retry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, model_validator
from yarl import URL

from hub.config import Settings
from hub.errors import detail
from hub.instruction import TransportPart
from hub.net import BlockedURL, redact
from hub.transports.base import Recipient, Result
from hub.transports.common import (
    http_failure,
    http_with_limits,
    over_cap,
    retry_after_s,
    unreachable,
)
from hub.transports.limits import Limiter

CHANNEL = re.compile(r"^[#@]?[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                              "request_timeout"})


class SlackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    token: str | None = Field(default=None, min_length=10)
    webhook_url: str | None = Field(default=None, alias="webhookUrl")
    base_url: str = Field(default="https://slack.com/api", alias="baseUrl")
    mps: float | None = Field(default=None, gt=0)
    daily_cap: int | None = Field(default=None, ge=1, alias="dailyCap")
    timeout_s: float = Field(default=15.0, gt=0, alias="timeoutS")

    @model_validator(mode="after")
    def _one_way_in(self) -> SlackConfig:
        if bool(self.token) == bool(self.webhook_url):
            raise ValueError("exactly one of token (Web API) or webhookUrl is required")
        return self


class SlackSpec:
    type = "slack"
    provider = "slack"
    config_model = SlackConfig
    secret_fields = frozenset({"token", "webhookUrl"})
    url_fields = ("webhookUrl", "baseUrl")  # checked by the guard at registration

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        if not part.message and not part.extras.get("blocks"):
            return [detail(["transport", "message"], "required (or extras.blocks)")]
        return []

    def normalize_address(self, address: str, region: str | None = None) -> str:
        channel = address.strip()
        if not CHANNEL.fullmatch(channel):
            raise ValueError("not a Slack channel id or name")
        return channel

    @asynccontextmanager
    async def open(self, config: Mapping[str, Any], content: Mapping[str, Any],
                   settings: Settings, transport_id: str) -> AsyncIterator[SlackSender]:
        cfg = SlackConfig.model_validate(config)
        async with http_with_limits(settings, transport_id, cfg.timeout_s, cfg.mps,
                                    cfg.daily_cap) as (http, limiter):
            yield SlackSender(cfg, content, http, limiter)


class SlackSender:
    def __init__(self, cfg: SlackConfig, content: Mapping[str, Any],
                 http: aiohttp.ClientSession, limiter: Limiter) -> None:
        self.cfg = cfg
        self.http = http
        self.limiter = limiter
        self.secrets = _secrets(cfg)
        extras = content.get("extras") or {}
        self.payload: dict[str, Any] = {"text": content.get("message") or ""}
        if extras.get("blocks"):
            self.payload["blocks"] = extras["blocks"]

    async def send(self, recipient: Recipient) -> Result:
        wait_s = await self.limiter.acquire()
        if wait_s is not None:
            return over_cap(self.limiter, wait_s)
        body = {**self.payload, "channel": recipient.address}
        secrets = self.secrets
        if self.cfg.token:
            url = self.cfg.base_url.rstrip("/") + "/chat.postMessage"
            headers = {"Authorization": f"Bearer {self.cfg.token}"}
        else:
            url, headers = str(self.cfg.webhook_url), {}
        try:
            async with self.http.post(url, json=body, headers=headers,
                                      allow_redirects=False) as resp:
                text = await resp.text()
                if resp.status != 200:
                    return http_failure(resp.status, text, resp.headers.get("Retry-After"),
                                        "Slack", secrets)
                if not self.cfg.token:  # incoming webhooks answer a plain "ok"
                    return Result("delivered", delivered=True,
                                  detail={"response": redact(text[:100], *secrets)})
                answer = await resp.json(content_type=None)
                retry_after = resp.headers.get("Retry-After")
        except (BlockedURL, aiohttp.ClientError, OSError, TimeoutError) as exc:
            return unreachable(exc, "Slack", secrets)
        except ValueError:  # not JSON
            return Result("temporary_failure", retryable=True,
                          error="Slack answered something that is not JSON")
        if not isinstance(answer, dict):
            return Result("temporary_failure", retryable=True,
                          error="Slack answered something that is not a JSON object")
        if answer.get("ok"):
            ref = f"{answer.get('channel', recipient.address)}/{answer.get('ts')}"
            return Result("delivered", delivered=True, provider_ref=ref,
                          detail={"ts": answer.get("ts")})
        error = str(answer.get("error", "unknown_error"))[:100]
        if error == "ratelimited":
            return Result("rate_limited", defer_s=retry_after_s(retry_after),
                          error="Slack: ratelimited")
        return Result("permanent_failure" if error not in RETRYABLE_ERRORS else "temporary_failure",
                      retryable=error in RETRYABLE_ERRORS, detail={"slackError": error},
                      error=f"Slack: {error}")


def _secrets(cfg: SlackConfig) -> tuple[str | None, ...]:
    """What must never appear in an error or detail: the token, the webhook URL and its
    path (an answer may quote the path alone)."""
    if not cfg.webhook_url:
        return (cfg.token,)
    try:
        url = URL(cfg.webhook_url)
    except ValueError:
        return (cfg.token, cfg.webhook_url)
    return (cfg.token, cfg.webhook_url, url.raw_path if len(url.raw_path) > 1 else None,
            url.path if len(url.path) > 1 else None, url.raw_name)


SLACK = SlackSpec()
