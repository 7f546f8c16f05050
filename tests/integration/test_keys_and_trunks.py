"""Key management (mint within a cap, list, revoke at once) and voice trunk grants, through
the API and the `hub` CLI, against a `hub api` that has an admin key."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import aiohttp
import pytest

from tests.conftest import ROOT, Procs, base_env
from tests.helpers import Api, free_port

pytestmark = pytest.mark.e2e

ADMIN = "admin-key-for-tests"
VOICE = {"callerId": "+9771000000", "maxChannels": 2, "cps": 1, "ringTimeoutS": 5}


@pytest.fixture
def admin_api(procs: Procs) -> str:
    port = free_port()
    procs.api(port, HUB_ADMIN_KEY=ADMIN, HUB_MAX_KEYS_PER_APP="3")
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def two_apps(admin_api: str, http: aiohttp.ClientSession, make_app: Any
                   ) -> tuple[Api, Api, Api]:
    a = Api(http, admin_api, await make_app("a"))
    b = Api(http, admin_api, await make_app("b"))
    admin = Api(http, admin_api, a.app)
    admin.key = ADMIN
    return a, b, admin


def hub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli.main", *args], cwd=ROOT,
                          env=base_env(**env), capture_output=True, text=True, timeout=60)


async def test_keys_are_capped_listed_and_revoked_at_once(
    two_apps: tuple[Api, Api, Api], db: Any
) -> None:
    a, b, admin = two_apps
    keys = f"/v1/apps/{a.app.app_id}/keys"
    minted = []
    for _ in range(2):  # the first key plus two: the cap of 3 active keys
        status, body = await a.post(keys)
        assert status == 201, body
        minted.append(body)
    status, err = await a.post(keys)
    assert status == 409 and err["error_id"] == "key-limit-reached", err
    status, extra = await admin.post(keys)  # the operator is not capped
    assert status == 201, extra

    status, listing = await a.get(keys)
    assert status == 200, listing
    assert len(listing["items"]) == 4
    assert all(set(k) == {"id", "prefix", "createdAt", "revokedAt"} for k in listing["items"])
    assert all(k["revokedAt"] is None for k in listing["items"])
    assert {k["prefix"] for k in listing["items"]} >= {m["apiKey"][:8] for m in minted}
    assert "apiKey" not in json.dumps(listing) and minted[0]["apiKey"] not in json.dumps(listing)
    key_id = minted[0]["id"]
    assert key_id in {k["id"] for k in listing["items"]}

    # Another app sees none of it, by either path.
    assert (await b.get(keys))[0] == 404
    assert (await b.call("DELETE", f"{keys}/{key_id}"))[0] == 404
    assert (await b.call("DELETE", f"/v1/apps/{b.app.app_id}/keys/{key_id}"))[0] == 404
    assert (await a.call("DELETE", f"{keys}/not-a-uuid"))[0] == 404

    assert (await a.get("/v1/sessions", key=minted[0]["apiKey"]))[0] == 200
    status, _ = await a.call("DELETE", f"{keys}/{key_id}")
    assert status == 204
    status, err = await a.get("/v1/sessions", key=minted[0]["apiKey"])
    assert status == 401 and err["error_id"] == "invalid-api-key"
    assert (await a.call("DELETE", f"{keys}/{key_id}"))[0] == 204  # again: still revoked
    revoked = {k["id"]: k["revokedAt"] for k in (await a.get(keys))[1]["items"]}
    assert revoked[key_id] is not None
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1",
                             uuid.UUID(key_id))
    # Revoked keys free their place under the cap... but the admin's extra key holds it.
    status, err = await a.post(keys)
    assert status == 409, err
    await admin.call("DELETE", f"{keys}/{extra['id']}")
    assert (await a.post(keys))[0] == 201


async def test_cli_manages_keys(two_apps: tuple[Api, Api, Api], admin_api: str) -> None:
    a, _, _ = two_apps
    env = {"HUB_API_URL": admin_api, "HUB_ADMIN_KEY": ADMIN}
    app = str(a.app.app_id)
    out = hub("apps", "keys", "create", app, "--json", **env)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    out = hub("apps", "keys", "list", app, "--json", **env)
    assert out.returncode == 0, out.stderr
    assert created["id"] in {k["id"] for k in json.loads(out.stdout)}
    out = hub("apps", "keys", "list", app, **env)
    assert created["id"] in out.stdout and created["prefix"] in out.stdout
    out = hub("apps", "keys", "revoke", app, created["id"], **env)
    assert out.returncode == 0, out.stderr
    assert (await a.get("/v1/sessions", key=created["apiKey"]))[0] == 401

    for args in (("revoke", app, "00000000-0000-0000-0000-000000000000"),
                 ("list", "00000000-0000-0000-0000-000000000000")):
        out = hub("apps", "keys", *args, **env)
        assert out.returncode != 0 and out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1 and "404" in out.stderr, out.stderr
    out = hub("apps", "keys", "list", app, HUB_API_URL=f"http://127.0.0.1:{free_port()}",
              HUB_ADMIN_KEY=ADMIN)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr


async def test_voice_trunks_only_as_granted(two_apps: tuple[Api, Api, Api]) -> None:
    a, b, admin = two_apps

    async def register(api: Api, trunk: str, name: str = "voice") -> tuple[int, Any]:
        return await api.post("/v1/transports", {"name": name, "type": "voice",
                                                 "config": {"trunk": trunk, **VOICE}})

    status, err = await register(a, "carrier-a")
    assert status == 422 and ["config", "trunk"] in [d["loc"] for d in err["details"]], err
    assert (await register(a, "trunk", "open"))[0] == 201  # HUB_OPEN_TRUNKS=trunk (tests)

    grants = f"/v1/apps/{a.app.app_id}/trunks"
    status, err = await a.post(grants, {"trunk": "carrier-a"})  # an app cannot grant itself
    assert status == 403 and err["error_id"] == "admin-key-required", err
    assert (await admin.post(grants, {"trunk": "bad name"}))[0] == 422
    status, body = await admin.post(grants, {"trunk": "carrier-a"})
    assert status == 201 and body["trunk"] == "carrier-a", body
    assert (await admin.post(grants, {"trunk": "carrier-a"}))[0] == 201  # idempotent
    status, listing = await a.get(grants)  # an app may read its own grants
    assert status == 200 and [g["trunk"] for g in listing["items"]] == ["carrier-a"]
    assert (await b.get(grants))[0] == 404

    status, transport = await register(a, "carrier-a")
    assert status == 201, transport
    status, err = await register(b, "carrier-a")
    assert status == 422 and ["config", "trunk"] in [d["loc"] for d in err["details"]], err
    status, err = await a.call("PATCH", f"/v1/transports/{transport['id']}",
                               {"config": {"trunk": "carrier-b"}})
    assert status == 422 and ["config", "trunk"] in [d["loc"] for d in err["details"]], err

    # Revoking a grant a transport still names is refused unless forced.
    status, err = await admin.call("DELETE", f"{grants}/carrier-a")
    assert status == 409 and err["error_id"] == "trunk-in-use", err
    assert err["details"] == [{"transportId": transport["id"], "name": "voice"}]
    assert (await admin.call("DELETE", f"{grants}/carrier-a?force=true"))[0] == 204
    assert (await admin.call("DELETE", f"{grants}/carrier-a"))[0] == 404
    status, err = await a.call("PATCH", f"/v1/transports/{transport['id']}",
                               {"config": {"cps": 2}})
    assert status == 422, err  # any config change re-checks the trunk
    assert (await register(a, "carrier-a", "again"))[0] == 422


async def test_cli_manages_trunk_grants(two_apps: tuple[Api, Api, Api], admin_api: str) -> None:
    a, _, _ = two_apps
    env = {"HUB_API_URL": admin_api, "HUB_ADMIN_KEY": ADMIN}
    app = str(a.app.app_id)
    out = hub("apps", "trunks", "grant", app, "carrier-x", **env)
    assert out.returncode == 0, out.stderr
    out = hub("apps", "trunks", "list", app, "--json", **env)
    assert [g["trunk"] for g in json.loads(out.stdout)] == ["carrier-x"]
    out = hub("apps", "trunks", "list", app, **env)
    assert "carrier-x" in out.stdout
    out = hub("apps", "trunks", "revoke", app, "carrier-x", **env)
    assert out.returncode == 0, out.stderr
    out = hub("apps", "trunks", "revoke", app, "carrier-x", **env)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = hub("apps", "trunks", "grant", app, "carrier-y", HUB_API_URL=admin_api,
              HUB_API_KEY=a.key)
    assert out.returncode != 0 and "403" in out.stderr and len(out.stderr.strip().splitlines()) == 1


async def test_openapi_lists_key_and_trunk_routes(api_server: str, http: aiohttp.ClientSession
                                                  ) -> None:
    async with http.get(f"{api_server}/openapi.json") as resp:
        paths = (await resp.json())["paths"]
    assert set(paths["/v1/apps/{id}/keys"]) == {"post", "get"}
    assert "delete" in paths["/v1/apps/{id}/keys/{keyId}"]
    assert set(paths["/v1/apps/{id}/trunks"]) == {"post", "get"}
    assert "delete" in paths["/v1/apps/{id}/trunks/{trunk}"]
    assert "HUB_METRICS_TOKEN" in paths["/metrics"]["get"]["description"]
