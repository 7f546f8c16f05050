"""A small synchronous client of the hub's HTTP API for the CLI."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from hub.config import Settings


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {msg}")


class Client:
    def __init__(self, base_url: str, api_key: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.api_key}")
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(exc.code, parsed) from None
        if not raw:
            return None
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw.decode()


def app_client(settings: Settings, args: argparse.Namespace) -> Client:
    """The client of an app's commands: --api-key/--api-url, else HUB_API_KEY/HUB_API_URL."""
    key = args.api_key or settings.api_key
    if not key:
        raise SystemExit("hub: an API key is needed: --api-key KEY or HUB_API_KEY")
    return Client(args.api_url or settings.client_api_url, key)
