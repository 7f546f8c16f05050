"""The contract every transport implements, and the values it exchanges with the engine.

A transport *spec* validates its part of the instruction, normalises addresses and checks
its registration config; `open()` gives a *sender* for one job's batch (connections are
reused across the batch). The delivery engine owns claiming, retries and recording.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from hub.config import Settings
from hub.instruction import TransportPart


@dataclass(frozen=True)
class Recipient:
    delivery_id: int
    attempt_id: str
    attempt: int
    address: str
    role: str = "to"  # "to": one of the audience; "cc"/"bcc": the session's single copy


@dataclass(frozen=True)
class Result:
    """What one attempt did. `retryable` only matters when `delivered` is false.

    `defer_s`: the provider asked us to come back later (rate limit, daily cap): the
    delivery waits that long without spending a retry. `receipt_s`: the provider accepted
    the message and will report its fate (status callback); the delivery stays
    `in_progress` until then, or until this many seconds have passed.
    """

    outcome: str
    delivered: bool = False
    retryable: bool = False
    provider_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    defer_s: float | None = None
    receipt_s: float | None = None
    attempted: bool = True  # false: nothing was sent (e.g. over the daily cap)


@runtime_checkable
class Sender(Protocol):
    async def send(self, recipient: Recipient) -> Result: ...


@runtime_checkable
class TransportSpec(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def config_model(self) -> builtins.type[BaseModel]: ...

    @property
    def secret_fields(self) -> frozenset[str]: ...

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]: ...

    def normalize_address(self, address: str, region: str | None = None) -> str: ...

    def open(
        self, config: Mapping[str, Any], content: Mapping[str, Any], settings: Settings,
        transport_id: str,
    ) -> AbstractAsyncContextManager[Sender]: ...
