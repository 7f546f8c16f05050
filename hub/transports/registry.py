"""Which spec serves which transport type."""

from __future__ import annotations

from hub.errors import Unprocessable, detail
from hub.transports.base import TransportSpec
from hub.transports.email import EMAIL
from hub.transports.http_api import API
from hub.transports.slack import SLACK
from hub.transports.twilio import SMS, WHATSAPP
from hub.transports.voice import VOICE

_SPECS: dict[str, TransportSpec] = {
    "email": EMAIL, "sms": SMS, "whatsapp": WHATSAPP, "voice": VOICE, "slack": SLACK, "api": API,
}


def spec_for(type_: str) -> TransportSpec:
    return _SPECS[type_]


def sending_spec(type_: str) -> TransportSpec:
    """The spec of a registrable type, or a clear 422."""
    spec = _SPECS.get(type_)
    if spec is None:
        raise Unprocessable(
            f"transport type {type_!r} cannot be registered",
            error_id="transport-type-unsupported",
            details=[detail(["type"], f"supported: {', '.join(_SPECS)}")],
        )
    return spec
