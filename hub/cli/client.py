"""A small synchronous client of the hub's HTTP API for the CLI.

Every failure leaves it as a `CliError`: `ApiError` when the API answered with an error
status (exit 1), `Unreachable` when it could not be reached at all (connection refused,
timeout, DNS, a broken connection; exit 4). Both read as one line."""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from hub.cli.output import EXIT_ERROR, EXIT_UNREACHABLE, CliError, one_line, reason
from hub.config import Settings

DEFAULT_TIMEOUT_S = 30.0


class ApiError(CliError):
    """The API answered 4xx/5xx: `HTTP 422 invalid-instruction: message (loc: why; ...)`."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(_describe(status, body), EXIT_ERROR)


class Unreachable(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)


def _describe(status: int, body: Any) -> str:
    if not isinstance(body, dict):
        return one_line(f"HTTP {status}: {body}" if body else f"HTTP {status}")
    head = f"HTTP {status}" + (f" {body['error_id']}" if body.get("error_id") else "")
    text = f"{head}: {body.get('message') or '(no message)'}"
    details = body.get("details")
    if isinstance(details, list) and details:
        parts = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                 if isinstance(d, dict) and "loc" in d else json.dumps(d, default=str)
                 for d in details]
        text += f" ({'; '.join(parts)})"
    elif details:
        text += f" ({json.dumps(details, default=str)})"
    return one_line(text)


class Client:
    def __init__(self, base_url: str, api_key: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CliError(f"the API URL {self.base_url!r} is not valid: it needs http:// or"
                           " https:// and a host (set --api-url or HUB_API_URL)", EXIT_ERROR)
        try:
            req = urllib.request.Request(self.base_url + path, data=data, method=method)
        except ValueError as exc:  # no scheme, bad characters in the URL
            raise CliError(f"the API URL {self.base_url!r} is not valid: {one_line(str(exc))}"
                           " (set --api-url or HUB_API_URL)", EXIT_ERROR) from None
        req.add_header("Authorization", f"Bearer {self.api_key}")
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace").strip()
            raise ApiError(exc.code, parsed) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach the API at {self.base_url}: {reason(exc)}"
                              " (is `hub api` running? set --api-url or HUB_API_URL)") from None
        except (ValueError, UnicodeError) as exc:  # e.g. a host name label too long
            raise CliError(f"the API URL {self.base_url!r} is not valid: {one_line(str(exc))}"
                           " (set --api-url or HUB_API_URL)", EXIT_ERROR) from None
        if not raw:
            return None
        if "json" not in ctype:
            return raw.decode(errors="replace")
        try:
            return json.loads(raw)
        except ValueError:
            raise Unreachable(f"the API at {self.base_url} answered something that is not"
                              " JSON (is --api-url the hub's API?)") from None


def app_client(settings: Settings, args: argparse.Namespace) -> Client:
    """A client with the app's key: --api-key, else HUB_API_KEY."""
    key = args.api_key or settings.api_key
    if not key:
        raise CliError("an API key is needed: --api-key KEY or HUB_API_KEY", EXIT_ERROR)
    return Client(args.api_url or settings.client_api_url, key, args.timeout)


def operator_client(settings: Settings, args: argparse.Namespace) -> Client:
    """For `hub apps keys|trunks`: --api-key, else the admin key, else the app's own key."""
    key = args.api_key or settings.admin_key or settings.api_key
    if not key:
        raise CliError("a key is needed: --api-key KEY, HUB_ADMIN_KEY or HUB_API_KEY", EXIT_ERROR)
    return Client(args.api_url or settings.client_api_url, key, args.timeout)
