"""Errors that reach users. Each carries an HTTP status, a stable kebab-case `error_id`,
a message saying what happened and what to do, and optional `details`.

    HubError
    ├── BadRequest (400)        malformed-json, json-too-deep, bad-parameter, bad-cursor,
    │                           malformed-body, bad-idempotency-key
    ├── Unauthorized (401)      missing-api-key, invalid-api-key
    ├── Forbidden (403)         admin-key-required, invalid-signature
    ├── NotFound (404)          session-not-found, transport-not-found, ...
    ├── Conflict (409)          session-not-waiting, idempotency-in-progress, ...
    ├── TooLarge (413)          body-too-large, audience-too-large, message-too-long
    ├── UnsupportedMediaType (415) unsupported-media-type
    ├── Unprocessable (422)     invalid-instruction, transport-not-configured, ...
    └── Unavailable (503)       dependency-unavailable, overloaded
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    status = 500
    error_id = "internal-error"

    def __init__(
        self,
        message: str,
        *,
        error_id: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if error_id:
            self.error_id = error_id
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error_id": self.error_id, "message": self.message, "details": self.details}


class BadRequest(HubError):
    status = 400
    error_id = "bad-request"


class Unauthorized(HubError):
    status = 401
    error_id = "invalid-api-key"


class Forbidden(HubError):
    status = 403
    error_id = "forbidden"


class NotFound(HubError):
    status = 404
    error_id = "not-found"


class Conflict(HubError):
    status = 409
    error_id = "conflict"


class TooLarge(HubError):
    status = 413
    error_id = "too-large"


class UnsupportedMediaType(HubError):
    status = 415
    error_id = "unsupported-media-type"


class Unprocessable(HubError):
    status = 422
    error_id = "unprocessable"


class Unavailable(HubError):
    status = 503
    error_id = "dependency-unavailable"


def detail(loc: list[str | int], msg: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg}
