"""The API's key and transport lookup caches never outlive a change: a revoked key and a
changed transport take effect at once on the process that made the change, and within
moments (a NOTIFY, not the cache's TTL) on another API process. The TTL is set far above
the waits here, so only the invalidation can make these pass."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import Procs
from tests.helpers import Api, free_port

pytestmark = pytest.mark.e2e

LONG_TTL = {"HUB_LOOKUP_CACHE_S": "60"}
OTHER_REPLICA_S = 1.0  # how long another process may take to hear of a change


@pytest.fixture
async def replicas(procs: Procs, http: aiohttp.ClientSession, make_app: Any) -> tuple[Api, Api]:
    """One app seen through two `hub api` processes sharing the database."""
    ports = [free_port(), free_port()]
    for port in ports:
        procs.api(port, **LONG_TTL)
    await asyncio.sleep(0.5)  # each process's listener connects (until then it caches nothing)
    app = await make_app("cached")
    return Api(http, f"http://127.0.0.1:{ports[0]}", app), \
        Api(http, f"http://127.0.0.1:{ports[1]}", app)


async def until(check: Any, within_s: float) -> float:
    """Seconds until `check()` is true; fails after `within_s`."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within_s, "the change was not seen in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def email(name: str | None = None) -> dict[str, Any]:
    transport: dict[str, Any] = {"type": "email", "subject": "Hi", "message": "Hello"}
    if name:
        transport["extras"] = {"transport": name}
    return {"transport": transport, "audience": ["a@example.com"],
            "options": {"trigger": "manual"}}


async def test_a_revoked_key_is_refused_at_once_by_every_replica(
        replicas: tuple[Api, Api]) -> None:
    one, two = replicas
    status, minted = await one.post(f"/v1/apps/{one.app.app_id}/keys")
    assert status == 201, minted
    key = minted["apiKey"]
    for api in (one, two):  # both processes now hold the key in their caches
        for _ in range(2):
            assert (await api.get("/v1/transports", key=key))[0] == 200
    status, _ = await one.call("DELETE", f"/v1/apps/{one.app.app_id}/keys/{minted['id']}")
    assert status == 204
    status, err = await one.get("/v1/transports", key=key)
    assert status == 401 and err["error_id"] == "invalid-api-key", err

    async def refused_by_two() -> bool:
        return (await two.get("/v1/transports", key=key))[0] == 401

    await until(refused_by_two, OTHER_REPLICA_S)
    assert (await two.get("/v1/transports"))[0] == 200  # the app's other key still works


async def test_a_transport_change_takes_effect_at_once_on_every_replica(
        replicas: tuple[Api, Api]) -> None:
    one, two = replicas
    ids = {}
    for name in ("first", "second", "named"):
        status, body = await one.post("/v1/transports", {
            "name": name, "type": "email",
            "config": {"host": "127.0.0.1", "port": 2525, "from": "hub@example.com"}})
        assert status == 201, body
        ids[name] = body["id"]
    for api in (one, two):  # the default and the named transport, now cached by both
        for _ in range(2):
            assert (await api.submit(email()))["transportId"] == ids["first"]
            assert (await api.submit(email("named")))["transportId"] == ids["named"]

    status, body = await one.call("PATCH", f"/v1/transports/{ids['second']}", {"default": True})
    assert status == 200, body
    assert (await one.submit(email()))["transportId"] == ids["second"]

    async def two_uses_second() -> bool:
        return (await two.submit(email()))["transportId"] == ids["second"]

    await until(two_uses_second, OTHER_REPLICA_S)

    status, body = await two.call("PATCH", f"/v1/transports/{ids['named']}", {"name": "renamed"})
    assert status == 200, body
    status, err = await two.post("/v1/sessions", email("named"))
    assert status == 422 and err["error_id"] == "transport-not-configured", err

    async def one_forgets_the_name() -> bool:
        return (await one.post("/v1/sessions", email("named")))[0] == 422

    await until(one_forgets_the_name, OTHER_REPLICA_S)
    assert (await one.submit(email("renamed")))["transportId"] == ids["named"]


async def test_pooled_connections_keep_no_lock_between_requests(
        api: Api, email_transport: dict[str, Any], db: Any) -> None:
    """The API's pool skips the reset query on release, so nothing a request takes on its
    connection may outlive its transaction: after submissions with keys (created, replayed,
    refused, reused with another body) no advisory lock is held by anyone."""
    ok = email()
    bad = {**email(), "audience": []}
    for key, body, want in (("k1", ok, 201), ("k1", ok, 201), ("k2", bad, 422),
                            ("k2", bad, 422), ("k1", bad, 422)):
        status, answer = await api.post("/v1/sessions", body, headers={"Idempotency-Key": key})
        assert status == want, answer
    for _ in range(5):
        assert (await api.post("/v1/sessions", ok))[0] == 201
    held = await db.fetch(
        "SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' AND database ="
        " (SELECT oid FROM pg_database WHERE datname = current_database())")
    assert held == []
