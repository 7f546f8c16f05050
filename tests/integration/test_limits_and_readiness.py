"""The API built in-process with other settings: size limits, private URLs, readiness."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from hub.api.app import create_app
from hub.config import Settings
from hub.store.apps import create_app as create_hub_app

Factory = Callable[..., Any]


@pytest.fixture
async def server(settings: Settings, db: Any) -> AsyncIterator[Factory]:
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> tuple[str, str]:
        srv = TestServer(create_app(settings.model_copy(update=overrides)), host="127.0.0.1")
        await srv.start_server()
        servers.append(srv)
        app = await create_hub_app(db, "limits")
        await db.execute(
            "INSERT INTO transports (id, app_id, name, type, provider, config, secrets, is_default)"
            " VALUES (gen_random_uuid(), $1, 'smtp', 'email', 'smtp', $2, '{}', true)",
            app.app_id, {"host": "127.0.0.1", "port": 1, "from": "a@example.com"})
        return str(srv.make_url("")).rstrip("/"), app.api_key

    yield start
    for srv in servers:
        await srv.close()


async def post(url: str, key: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        url + "/v1/sessions", json=body if raw is None else None, data=raw,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


def email(audience: list[str], **options: Any) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": "S", "message": "M"},
            "audience": audience, "options": options}


async def test_size_limits_answer_413(server: Factory, db: Any) -> None:
    url, key = await server(audience_max=3, message_max_chars=10, body_max_bytes=2000)
    status, err = await post(url, key, email([f"a{i}@example.com" for i in range(4)]))
    assert status == 413 and err["error_id"] == "audience-too-large"
    long = email(["a@example.com"])
    long["transport"]["message"] = "x" * 11
    status, err = await post(url, key, long)
    assert status == 413 and err["error_id"] == "message-too-long"
    assert err["details"][0]["loc"] == ["transport", "message"]
    status, err = await post(url, key, raw=b'{"audience": ["' + b"a" * 3000 + b'"]}')
    assert status == 413 and err["error_id"] == "body-too-large"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_private_webhook_urls_refused_unless_allowed(server: Factory) -> None:
    url, key = await server(allow_private_urls=False)
    for hook in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x",
                 "http://localhost/x", "http://169.254.169.254/latest"):
        status, err = await post(url, key, email(["a@example.com"], webhookUrl=hook))
        assert status == 422, hook
        assert err["details"][0]["loc"] == ["options", "webhookUrl"]
    status, _ = await post(url, key, email(["a@example.com"], webhookUrl="https://example.com/h"))
    assert status == 201


async def test_readyz_reports_each_dependency(server: Factory) -> None:
    url, _ = await server()
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as resp:
        assert resp.status == 200
    bad_url, _ = await server(redis_url="redis://127.0.0.1:1/0",
                              database_url="postgresql://postgres@127.0.0.1:1/hub")
    async with aiohttp.ClientSession() as http, http.get(bad_url + "/readyz") as resp:
        body = await resp.json()
        assert resp.status == 503 and body["error_id"] == "dependency-unavailable"
        assert set(body["details"]) == {"postgres", "redis"}


async def overloaded_total(url: str) -> float:
    """`hub_api_overloaded_total` as this API's /metrics shows it."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("hub_api_overloaded_total"))


async def test_past_its_in_flight_limit_the_api_answers_503_at_once(server: Factory,
                                                                    db: Any) -> None:
    """Two submissions stuck in their handler (the sessions table locked; large ones,
    each waiting in its own statement) fill a limit of 2: the next client-API request is
    refused at once with 503 `overloaded` and Retry-After, a provider callback and the
    health check are still served, and a slow upload never took a place. Once the two
    finish, requests are admitted again."""
    url, key = await server(api_max_in_flight=2, metrics_cache_s=0)
    host, port = url.removeprefix("http://").split(":")
    refused_before = await overloaded_total(url)
    body = json.dumps(email(["slow@example.com"], trigger="manual")).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nAuthorization: Bearer " + key.encode()
                 + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
    await writer.drain()  # the rest of the body comes at the end
    async with db.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE sessions IN SHARE ROW EXCLUSIVE MODE")
        # each large enough for its own statement (small ones would share one)
        stuck = [asyncio.create_task(post(url, key, email(
            [f"stuck{i}@example.com", *(f"z{i}-{j}@example.com" for j in range(1000))],
            trigger="manual"))) for i in range(2)]
        for _ in range(100):  # until both wait for the lock inside their handler
            waiting = await db.fetchval("SELECT count(*) FROM pg_stat_activity"
                                        " WHERE wait_event_type = 'Lock'")
            if waiting >= 2:
                break
            await asyncio.sleep(0.05)
        assert waiting == 2
        status, err = await asyncio.wait_for(  # at once, not after the lock
            post(url, key, email(["refused@example.com"], trigger="manual")), 5.0)
        assert status == 503 and err["error_id"] == "overloaded", err
        assert "HUB_API_MAX_IN_FLIGHT" in err["message"]
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/v1/sessions",
                                headers={"Authorization": f"Bearer {key}"}) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            async with http.post(
                    url + "/v1/callbacks/twilio/00000000-0000-0000-0000-000000000000",
                    data={"MessageSid": "SM1"}) as resp:
                assert resp.status != 503  # providers' callbacks are not client requests
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 200
    assert [s for s, _ in await asyncio.gather(*stuck)] == [201, 201]
    assert await overloaded_total(url) == refused_before + 2  # the POST and the GET
    writer.write(body[10:])
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 201")
    writer.close()
    status, _ = await post(url, key, email(["admitted@example.com"], trigger="manual"))
    assert status == 201
    stored = await db.fetch("SELECT address FROM deliveries WHERE address NOT LIKE 'z%'"
                            " ORDER BY address")
    assert [r["address"] for r in stored] == ["admitted@example.com", "slow@example.com",
                                              "stuck0@example.com", "stuck1@example.com"]
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 4 + 2000
