"""The contract every transport implements, and the values it exchanges with the engine.

A transport *spec* validates its part of the instruction, normalises addresses and checks
its registration config; `open()` gives a *sender* for one job's batch (connections are
reused across the batch). The delivery engine owns claiming, retries and recording.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from hub.config import Settings
from hub.instruction import TransportPart
from hub.results import Recipient, Result

__all__ = ["Recipient", "Result", "Sender", "TransportSpec"]


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
