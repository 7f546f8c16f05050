"""`hub calls`, `hub trunks` and `hub asterisk`: live views of Asterisk for operators,
through ARI (channels, hang-ups) and AMI (CLI commands, PJSIP contacts and qualify)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from redis.asyncio import Redis

from hub.config import Settings
from hub.store import voice as store
from hub.store.db import create_pool
from hub.voice.ami import Ami, AmiError
from hub.voice.calls import HANGUP_VAR, attempt_of
from hub.voice.carrier import Carrier, combined
from hub.voice.trunks import VoiceConfig

T = TypeVar("T")


def ari_get(settings: Settings, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(settings.ari_url.rstrip("/") + "/ari" + path, method=method,
                                 data=None if method == "GET" else b"")
    token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
            return json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise OSError(f"ARI at {settings.ari_url} refused user {settings.ari_user}") from None
        if exc.code == 404 and path.startswith("/channels/"):
            raise OSError(f"no live call {path.split('/')[2].split('?')[0]}") from None
        raise OSError(f"ARI answered {exc.code} for {path}") from None
    except urllib.error.URLError as exc:
        raise ConnectionError(f"ARI at {settings.ari_url} is unreachable: {exc.reason}") from None


def calls(settings: Settings) -> list[dict[str, Any]]:
    channels = ari_get(settings, "/channels")
    attempts = {ch["id"]: attempt_of(ch["id"]) for ch in channels}
    sessions = asyncio.run(_sessions_of([a for a in attempts.values() if a], settings))
    now = datetime.now(UTC)
    rows = []
    for ch in channels:
        created = _when(ch.get("creationtime"))
        rows.append({"id": ch["id"], "name": ch["name"], "state": ch["state"],
                     "number": (ch.get("connected") or {}).get("number") or
                     (ch.get("dialplan") or {}).get("exten"),
                     "sessionId": sessions.get(attempts[ch["id"]] or ""),
                     "durationS": round((now - created).total_seconds()) if created else None,
                     "createdAt": ch.get("creationtime")})
    return rows


def hangup(settings: Settings, channel: str, retry: bool) -> None:
    """End a live call; the controller records it as the operator's (no retry unless
    `retry`)."""
    quoted = urllib.parse.quote(channel, safe="")
    name = ari_get(settings, f"/channels/{quoted}")["name"]
    value = "operator-retry" if retry else "operator"
    # Through AMI: ARI's POST /channels/ID/variable waits until a playback in progress ends.
    asyncio.run(_with_ami(settings, lambda ami: ami.setvar(name, HANGUP_VAR, value)))
    ari_get(settings, f"/channels/{quoted}?reason=normal", "DELETE")


def run_command(settings: Settings, command: str) -> str:
    async def go(ami: Ami) -> str:
        return await ami.command(command)

    return asyncio.run(_with_ami(settings, go))


async def _with_ami(settings: Settings, work: Callable[[Ami], Awaitable[T]]) -> T:
    for name in ("panoramisk", "hub.voice.ami.manager"):  # the CLI says it in one line
        logging.getLogger(name).setLevel(logging.CRITICAL)
    ami = Ami(settings.ami_host, settings.ami_port, settings.ami_user, settings.ami_password)
    try:
        await ami.connect()
        return await work(ami)
    except AmiError as exc:
        raise (ConnectionError if isinstance(exc, ConnectionError) else OSError)(str(exc)) from None
    finally:
        ami.close()


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text or "", "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


async def _sessions_of(attempt_ids: list[str], settings: Settings) -> dict[str, str]:
    if not attempt_ids:
        return {}
    try:
        pool = await create_pool(settings.database_url, max_size=1)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConnectionError(f"the database is unreachable: {exc}") from None
    try:
        async with pool.acquire() as conn:
            return await store.sessions_of_attempts(conn, attempt_ids)
    finally:
        await pool.close()


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
    names = [r["endpoint"] for r in rows]
    contacts = asyncio.run(_with_ami(settings, lambda ami: _contacts(ami, names)))
    carrier = asyncio.run(_carrier_view(settings, names))
    usage = asyncio.run(_usage(settings, names))
    for row in rows:
        row.update(contacts.get(row["endpoint"], {}))
        row.update(carrier.get(row["endpoint"], {}))
        row.update(usage.get(row["endpoint"], {}))
    return rows


async def _contacts(ami: Ami, endpoints: list[str]) -> dict[str, dict[str, Any]]:
    """Per endpoint, from AMI: its contacts' URIs, qualify status and round trip."""
    found: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        details = await ami.endpoint_contacts(endpoint)
        found[endpoint] = contact_view(details)
    return found


def contact_view(details: list[dict[str, str]]) -> dict[str, Any]:
    """`PJSIPShowEndpoint`'s ContactStatusDetail events -> contact, qualify, rttMs."""
    if not details:
        return {"contact": None, "qualify": None, "rttMs": None}
    rtts = [d.get("RoundtripUsec", "") for d in details]
    return {"contact": ", ".join(d.get("URI", "") for d in details),
            "qualify": ", ".join(d.get("Status", "") for d in details),
            "rttMs": ", ".join(f"{int(r) / 1000:.1f}" if r.isdigit() else "-" for r in rtts)}


async def _usage(settings: Settings, endpoints: list[str]) -> dict[str, dict[str, Any]]:
    """Per endpoint, from PostgreSQL (exact across hosts): the cap (the smallest
    maxChannels of the voice transports naming it) and calls per second over 60 s."""
    try:
        pool = await create_pool(settings.database_url, max_size=1)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConnectionError(f"the database is unreachable: {exc}") from None
    found: dict[str, dict[str, Any]] = {}
    try:
        async with pool.acquire() as conn:
            for endpoint in endpoints:
                limits = combined(VoiceConfig.model_validate(c)
                                  for c in await store.endpoint_configs(conn, endpoint))
                started = await store.attempts_started(conn, endpoint, 60)
                found[endpoint] = {"cap": limits.max_channels if limits else None,
                                   "callsLastMinute": started,
                                   "cps": round(started / 60, 2)}
    finally:
        await pool.close()
    return found


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

