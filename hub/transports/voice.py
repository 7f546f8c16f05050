"""Voice transports: one registered trunk each. Calls are placed by `hub voice`, the ARI
controller, not by RQ workers; this module validates instructions and trunk configs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError

from hub.addresses import normalize_phone
from hub.config import Settings
from hub.errors import detail
from hub.instruction import TransportPart
from hub.store import grants
from hub.store.db import Pool
from hub.transports.base import Sender
from hub.voice.menu import menu_problems
from hub.voice.trunks import VoiceRegistration, amd_override


class VoiceSpec:
    type = "voice"
    provider = "asterisk"
    config_model = VoiceRegistration
    secret_fields: frozenset[str] = frozenset()

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        problems = []
        if not (part.file_url or part.message):
            problems.append(detail(["transport", "message"],
                                   "voice needs fileUrl (audio to play) or message (spoken)"))
        problems += menu_problems(part.extras)
        try:
            amd_override(part.extras)
        except (ValidationError, TypeError):
            problems.append(detail(["transport", "extras", "amd"],
                                   'true, false or {"enabled": bool, "onMachine": "hangup" | "play"}'))
        return problems

    def normalize_address(self, address: str, region: str | None = None) -> str:
        return normalize_phone(address, region)

    @asynccontextmanager
    async def open(self, config: Mapping[str, Any], content: Mapping[str, Any],
                   settings: Settings, transport_id: str) -> AsyncIterator[Sender]:
        raise NotImplementedError("voice calls are placed by `hub voice`, not by RQ workers")
        yield  # pragma: no cover


VOICE = VoiceSpec()


async def trunk_problems(pool: Pool, settings: Settings, app_id: uuid.UUID,
                         config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A voice transport names only a trunk granted to its app or open to all (DESIGN §3)."""
    trunk = str(config.get("trunk", ""))
    if trunk in settings.open_trunk_names or await grants.is_granted(pool, app_id, trunk):
        return []
    return [detail(["config", "trunk"],
                   f"trunk {trunk!r} is not granted to this app; the operator grants trunks"
                   " (POST /v1/apps/{id}/trunks or `hub apps trunks grant APP TRUNK`)")]
