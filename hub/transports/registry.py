"""Which spec serves which transport type/provider."""

from __future__ import annotations

from typing import Any

from hub.addresses import normalize_phone
from hub.errors import Unprocessable, detail
from hub.instruction import TransportPart
from hub.transports.base import TransportSpec
from hub.transports.email import EMAIL
from hub.transports.twilio import SMS, WHATSAPP
from hub.transports.voice import VOICE


class _NotYetAvailable:
    """Validation for transport types whose senders ship later (sms, whatsapp, voice, ...)."""

    provider = "none"

    def __init__(self, type_: str, address_kind: str) -> None:
        self.type = type_
        self.address_kind = address_kind

    def validate_content(self, part: TransportPart) -> list[dict[str, Any]]:
        if not part.message and not part.extras.get("contentSid"):
            return [detail(["transport", "message"], "field required")]
        return []

    def normalize_address(self, address: str, region: str | None = None) -> str:
        if self.address_kind == "phone":
            return normalize_phone(address, region)
        if not address.strip():
            raise ValueError("must not be empty")
        return address.strip()


_SPECS: dict[str, Any] = {
    "email": EMAIL,
    "sms": SMS,
    "whatsapp": WHATSAPP,
    "voice": VOICE,
    "slack": _NotYetAvailable("slack", "channel"),
    "api": _NotYetAvailable("api", "any"),
}


def spec_for(type_: str) -> Any:
    return _SPECS[type_]


def sending_spec(type_: str) -> TransportSpec:
    """The spec of a type that can be registered and sent through, or a clear 422."""
    spec = _SPECS.get(type_)
    if not isinstance(spec, TransportSpec):
        raise Unprocessable(
            f"transport type {type_!r} cannot be registered in this version of the hub",
            error_id="transport-type-unsupported",
            details=[detail(["type"], "supported: email, voice, sms, whatsapp")],
        )
    return spec
