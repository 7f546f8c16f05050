"""Standard Webhooks signing (https://www.standardwebhooks.com)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hub.constants import WEBHOOK_SECRET_PREFIX


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `id.timestamp.body` with the app's `whsec_` secret."""
    key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "user-agent": "connect-hub-webhooks/1",
    }
