"""`hub calls` and `hub trunks`: live views of Asterisk through ARI for operators."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from typing import Any

from redis.asyncio import Redis

from hub.config import Settings
from hub.voice.carrier import Carrier


def ari_get(settings: Settings, path: str) -> Any:
    req = urllib.request.Request(settings.ari_url.rstrip("/") + "/ari" + path)
    token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"ARI answered {exc.code} for {path}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"ARI at {settings.ari_url} is unreachable: {exc.reason}") from None


def calls(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for ch in ari_get(settings, "/channels"):
        rows.append({"id": ch["id"], "name": ch["name"], "state": ch["state"],
                     "number": (ch.get("connected") or {}).get("number") or
                     (ch.get("dialplan") or {}).get("exten"),
                     "createdAt": ch.get("creationtime")})
    return rows


def trunks(settings: Settings) -> list[dict[str, Any]]:
    active: dict[str, int] = {}
    for ch in ari_get(settings, "/channels"):
        name = ch["name"]  # PJSIP/trunk-00000001
        if name.startswith("PJSIP/"):
            endpoint = name[6:].rsplit("-", 1)[0]
            active[endpoint] = active.get(endpoint, 0) + 1
    rows = [{"endpoint": ep["resource"], "state": ep["state"],
             "activeCalls": active.get(ep["resource"], 0)}
            for ep in ari_get(settings, "/endpoints/PJSIP")]
    carrier = asyncio.run(_carrier_view(settings, [r["endpoint"] for r in rows]))
    for row in rows:
        row.update(carrier.get(row["endpoint"], {}))
    return rows


async def _carrier_view(settings: Settings, endpoints: list[str]) -> dict[str, dict[str, Any]]:
    """Per endpoint, from Redis: channels held by every controller (the carrier's count,
    against the cap) and the trunk's latest problem (e.g. SIP 403 from the carrier)."""
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=2)
    carrier = Carrier(redis)
    found: dict[str, dict[str, Any]] = {}
    try:
        for endpoint in endpoints:
            problem = await carrier.last_problem(endpoint)
            found[endpoint] = {
                "heldChannels": await carrier.held(endpoint),
                "lastProblem": f"{problem['at']} {problem['note']}" if problem else None}
    finally:
        await redis.aclose()
    return found


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
