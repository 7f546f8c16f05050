"""The HTTP API against the running `hub api` process: validation, isolation, contract."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api

GOOD = {"transport": {"type": "email", "subject": "S", "message": "M"},
        "audience": ["a@example.com"]}


def variant(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"transport": dict(GOOD["transport"]), "audience": list(GOOD["audience"])}
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for p in parents:
            target = target.setdefault(p, {})
        if value is _DROP:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return body


_DROP = object()

INVALID = [
    (variant(transport__type="fax"), ["transport", "type"]),
    (variant(transport__subject=_DROP), ["transport", "subject"]),
    (variant(transport__message=""), ["transport", "message"]),
    (variant(audience=[]), ["audience"]),
    (variant(audience=["a@example.com", "nope", "b@example.com"]), ["audience", 1]),
    (variant(audience="a@example.com"), ["audience"]),
    (variant(options__trigger="later"), ["options", "trigger"]),
    (variant(options__trigger="scheduled"), ["options", "scheduledTimestamp"]),
    (variant(options__scheduledTimestamp="2030-01-01T00:00:00"), ["options", "scheduledTimestamp"]),
    (variant(options__scheduledTimestamp="tomorrow", options__trigger="scheduled"),
     ["options", "scheduledTimestamp"]),
    (variant(options__retries=-1), ["options", "retries"]),
    (variant(options__retryIntervalMinutes="10,abc"), ["options", "retryIntervalMinutes"]),
    (variant(options__webhookUrl="ftp://example.com/x"), ["options", "webhookUrl"]),
    (variant(options__colour="blue"), ["options", "colour"]),
    (variant(transport__extras={"cc": ["not-mail"]}), ["transport", "extras", "cc", 0]),
    (variant(xref="x" * 300), ["xref"]),
]


@pytest.mark.parametrize(("body", "loc"), INVALID)
async def test_invalid_instruction_is_422_with_location_and_stores_nothing(
    api: Api, email_transport: dict[str, Any], db: Any, body: dict[str, Any], loc: list[Any]
) -> None:
    status, err = await api.post("/v1/sessions", body)
    assert status == 422, err
    assert err["error_id"] == "invalid-instruction"
    assert loc in [d["loc"] for d in err["details"]], err["details"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_every_problem_is_listed(
    api: Api, email_transport: dict[str, Any], db: Any
) -> None:
    body = variant(transport__subject=_DROP, audience=["x", "a@example.com", "y"],
                   options__retries=-2)
    status, err = await api.post("/v1/sessions", body)
    assert status == 422 and err["error_id"] == "invalid-instruction"
    locs = [d["loc"] for d in err["details"]]
    # A bad option does not hide the content or the addresses: one answer lists them all.
    assert locs == [["transport", "subject"], ["audience", 0], ["audience", 2],
                    ["options", "retries"]]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_every_content_and_address_problem_is_listed(
    api: Api, email_transport: dict[str, Any]
) -> None:
    body = variant(transport__subject=_DROP, audience=["x", "a@example.com", "y"])
    status, err = await api.post("/v1/sessions", body)
    assert status == 422
    locs = [d["loc"] for d in err["details"]]
    assert locs == [["transport", "subject"], ["audience", 0], ["audience", 2]]
    assert "audience.0: not a valid email address" in err["message"]


async def test_malformed_json_is_400(api: Api) -> None:
    status, err = await api.post("/v1/sessions", raw=b"{not json")
    assert status == 400 and err["error_id"] == "malformed-json"


async def test_no_transport_registered_is_422(api: Api, db: Any) -> None:
    status, err = await api.post("/v1/sessions", GOOD)
    assert status == 422 and err["error_id"] == "transport-not-configured"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_auth_is_required_and_checked(api: Api) -> None:
    async with api.http.get(api.base + "/v1/sessions") as resp:
        assert resp.status == 401 and (await resp.json())["error_id"] == "missing-api-key"
    status, err = await api.get("/v1/sessions", key="hub_wrong")
    assert status == 401 and err["error_id"] == "invalid-api-key"
    status, err = await api.post("/v1/apps", {"name": "x"})
    assert status == 403 and err["error_id"] == "admin-key-required"


async def test_apps_never_see_each_other(
    api: Api, email_transport: dict[str, Any], make_app: Any
) -> None:
    created = await api.submit(GOOD)
    sid = created["sessionId"]
    other = Api(api.http, api.base, await make_app("other"))
    for method, path in (("GET", f"/v1/sessions/{sid}"), ("GET", f"/v1/sessions/{sid}/deliveries"),
                         ("POST", f"/v1/sessions/{sid}/cancel"),
                         ("GET", f"/v1/sessions/{sid}/deliveries/a@example.com/attempts"),
                         ("GET", f"/v1/transports/{email_transport['id']}")):
        status, err = await other.call(method, path)
        assert status == 404, (path, err)
    status, listed = await other.get("/v1/sessions")
    assert listed["items"] == []
    status, listed = await other.get("/v1/transports")
    assert listed["items"] == []
    assert (await api.session(sid))["status"] in ("queued", "running", "completed")


async def test_transport_secrets_are_write_only(api: Api, smtp_sink: Any) -> None:
    port, _ = smtp_sink
    status, body = await api.post("/v1/transports", {"name": "auth", "type": "email", "config": {
        "host": "127.0.0.1", "port": port, "from": "a@example.com", "username": "u",
        "password": "s3cr3t-pw"}})
    assert status == 201 and "password" not in body["config"]
    for path in ("/v1/transports", f"/v1/transports/{body['id']}"):
        status, got = await api.get(path)
        assert "s3cr3t-pw" not in str(got)
    status, patched = await api.call("PATCH", f"/v1/transports/{body['id']}",
                                     {"config": {"port": port + 1}})
    assert status == 200 and patched["config"]["port"] == port + 1
    assert "s3cr3t-pw" not in str(patched)


async def test_transport_config_is_validated(api: Api) -> None:
    status, err = await api.post("/v1/transports", {"name": "x", "type": "email",
                                                    "config": {"port": 99999}})
    assert status == 422 and err["error_id"] == "invalid-transport-config"
    locs = [d["loc"] for d in err["details"]]
    assert ["config", "host"] in locs and ["config", "port"] in locs


async def test_voice_calling_windows_are_checked_at_registration(api: Api) -> None:
    window = {"start": "22:00", "end": "06:00"}
    status, err = await api.post("/v1/transports", {"name": "v", "type": "voice", "config": {
        "trunk": "trunk", "callingWindow": window}})
    assert status == 422 and err["error_id"] == "invalid-transport-config"
    assert [d["loc"] for d in err["details"]] == [["config", "timeZone"]]
    status, err = await api.post("/v1/transports", {"name": "v", "type": "voice", "config": {
        "trunk": "trunk", "callingWindow": {"start": "09:00", "end": "09:00"},
        "timeZone": "Nowhere/Atlantis"}})
    assert status == 422
    assert [d["loc"] for d in err["details"]] == [["config", "callingWindow", "end"],
                                                  ["config", "timeZone"]]
    status, body = await api.post("/v1/transports", {"name": "v", "type": "voice", "config": {
        "trunk": "trunk", "callingWindow": window, "timeZone": "America/Chicago"}})
    assert status == 201 and body["config"]["timeZone"] == "America/Chicago"
    status, err = await api.call("PATCH", f"/v1/transports/{body['id']}",
                                 {"config": {"callingWindow": {"start": "25:00", "end": "06:00"}}})
    assert status == 422 and err["details"][0]["loc"] == ["config", "callingWindow", "start"]


async def test_sessions_list_filters_and_paginates(api: Api, email_transport: dict[str, Any]) -> None:
    ids = [(await api.submit({**GOOD, "xref": f"batch-{i % 2}",
                              "options": {"trigger": "manual"}}))["sessionId"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        status, page = await api.get("/v1/sessions?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200
        seen += [s["sessionId"] for s in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    status, page = await api.get("/v1/sessions?xref=batch-1")
    assert [s["sessionId"] for s in page["items"]] == [ids[3], ids[1]]
    status, page = await api.get("/v1/sessions?status=awaiting_trigger&transport=email&limit=1")
    assert len(page["items"]) == 1 and page["nextCursor"]
    status, err = await api.get("/v1/sessions?status=bogus")
    assert status == 400 and err["error_id"] == "bad-parameter"
    status, err = await api.get("/v1/sessions?cursor=garbage")
    assert status == 400 and err["error_id"] == "bad-cursor"


async def test_ops_endpoints_need_no_key(api: Api) -> None:
    async with api.http.get(api.base + "/openapi.json") as resp:
        spec = await resp.json()
    assert spec["openapi"].startswith("3.1")
    assert "/v1/sessions" in spec["paths"]
    props = spec["components"]["schemas"]["Options"]["properties"]
    assert {"trigger", "scheduledTimestamp", "retries", "retryIntervalMinutes", "webhookUrl"} <= set(props)
    for path in ("/healthz", "/readyz", "/metrics", "/docs"):
        async with api.http.get(api.base + path) as resp:
            assert resp.status == 200, path
    async with api.http.get(api.base + "/metrics") as resp:
        assert "hub_queue_depth" in await resp.text()


async def test_unknown_route_is_json_404(api: Api) -> None:
    status, err = await api.get("/v1/nothing-here")
    assert status == 404 and err["error_id"] == "not-found"
    status, err = await api.get("/v1/sessions/not-a-uuid")
    assert status == 404 and err["error_id"] == "session-not-found"


async def test_idempotency_key_while_the_first_request_runs_is_409(
    api: Api, email_transport: dict[str, Any], db: Any,
) -> None:
    import asyncio

    big = {**GOOD, "audience": [f"user{i}@example.com" for i in range(60_000)],
           "options": {"trigger": "manual"}}
    headers = {"Idempotency-Key": "slow-1"}
    first = asyncio.create_task(api.post("/v1/sessions", big, headers=headers))
    await asyncio.sleep(0.15)
    second = await api.call("POST", "/v1/sessions", big, headers=headers)
    status, body = second
    assert status == 409 and body["error_id"] == "idempotency-in-progress"
    assert api.last_headers.get("Retry-After") == "1"
    status, created = await first
    assert status == 201
    status, replay = await api.post("/v1/sessions", big, headers=headers)
    assert status == 201 and replay == created
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_concurrent_identical_requests_create_one_session(
    api: Api, email_transport: dict[str, Any], db: Any,
) -> None:
    import asyncio

    body = {**GOOD, "audience": [f"c{i}@example.com" for i in range(2000)]}
    headers = {"Idempotency-Key": "burst-1"}
    answers = await asyncio.gather(*(api.post("/v1/sessions", body, headers=headers)
                                     for _ in range(50)))
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    assert len({b["sessionId"] for s, b in answers if s == 201}) == 1
    assert all(b["error_id"] == "idempotency-in-progress" for s, b in answers if s == 409)
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_a_session_is_kept_only_together_with_its_idempotency_answer(
    api: Api, email_transport: dict[str, Any], db: Any,
) -> None:
    # A fault injected in PostgreSQL: the 201 answer of a key cannot be stored.
    await db.execute("""
        CREATE FUNCTION refuse_answer() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'injected: answer not stored'; END $$;
        CREATE TRIGGER refuse_answer BEFORE INSERT OR UPDATE ON idempotency_keys
        FOR EACH ROW WHEN (NEW.status_code = 201) EXECUTE FUNCTION refuse_answer();
    """)
    headers = {"Idempotency-Key": "fault-1"}
    try:
        status, err = await api.post("/v1/sessions", GOOD, headers=headers)
        assert status == 500, err
        # Neither the session nor a key row was kept: nothing to find, nothing blocked.
        assert await db.fetchval("SELECT count(*) FROM sessions") == 0
        assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    finally:
        await db.execute("DROP TRIGGER refuse_answer ON idempotency_keys;"
                         " DROP FUNCTION refuse_answer()")
    status, created = await api.post("/v1/sessions", GOOD, headers=headers)
    assert status == 201, created
    status, again = await api.post("/v1/sessions", GOOD, headers=headers)
    assert status == 201 and again == created
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_concurrent_identical_small_requests_create_one_session(
    api: Api, email_transport: dict[str, Any], db: Any,
) -> None:
    """A small audience goes in with the key's answer in one statement: the same
    guarantees as the large one's transaction."""
    import asyncio

    for round_ in range(5):
        headers = {"Idempotency-Key": f"small-burst-{round_}"}
        answers = await asyncio.gather(*(api.post("/v1/sessions", GOOD, headers=headers)
                                         for _ in range(20)))
        assert {s for s, _ in answers} <= {201, 409} and 201 in {s for s, _ in answers}
        assert len({b["sessionId"] for s, b in answers if s == 201}) == 1
    assert await db.fetchval("SELECT count(*) FROM sessions") == 5
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 5


async def test_an_answer_committed_just_before_a_request_held_its_key_is_replayed(
    api: Api, email_transport: dict[str, Any], db: Any,
) -> None:
    """The request's statement reads earlier answers in the snapshot it started with; one
    committed after that (here: while its own answer's insert is held up) is found by the
    key's conflict, read again and replayed, and the request creates nothing."""
    import asyncio
    import hashlib
    import json

    app_id = await db.fetchval("SELECT app_id FROM transports WHERE id = $1",
                               email_transport["id"])
    request_hash = hashlib.sha256(json.dumps(GOOD, sort_keys=True,
                                             separators=(",", ":")).encode()).digest()
    await db.execute("""
        CREATE FUNCTION hold_answer() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$;
        CREATE TRIGGER hold_answer BEFORE INSERT ON idempotency_keys
        FOR EACH ROW WHEN (NEW.body ? 'sessionId') EXECUTE FUNCTION hold_answer();
    """)
    try:
        request = asyncio.create_task(
            api.post("/v1/sessions", GOOD, headers={"Idempotency-Key": "race-1"}))
        await asyncio.sleep(0.4)  # its statement holds the key, its answer's insert sleeps
        await db.execute(
            "INSERT INTO idempotency_keys (app_id, key, request_hash, status_code, body)"
            " VALUES ($1, 'race-1', $2, 201, $3)", app_id, request_hash, {"first": True})
        status, body = await request
    finally:
        await db.execute("DROP TRIGGER hold_answer ON idempotency_keys;"
                         " DROP FUNCTION hold_answer()")
    assert (status, body) == (201, {"first": True})
    assert api.last_headers.get("Idempotency-Replay") == "true"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


@pytest.mark.parametrize("key", [None, "as-stored-1"])
async def test_the_201_answer_is_the_session_as_stored(
    api: Api, email_transport: dict[str, Any], key: str | None,
) -> None:
    """The answer is made from the session before it is stored (so that an idempotency
    key's copy goes in with it): it must read as the stored session does."""
    from datetime import UTC, datetime, timedelta, timezone

    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=123456)
    body = {**variant(options__trigger="scheduled", options__retries=2,
                      options__retryIntervalMinutes="1.5,60",
                      options__scheduledTimestamp=at.astimezone(
                          timezone(timedelta(hours=2))).isoformat()),
            "xref": "as-stored"}
    headers = {"Idempotency-Key": key} if key else {}
    status, created = await api.post("/v1/sessions", body, headers=headers)
    assert status == 201, created
    status, stored = await api.get(f"/v1/sessions/{created['sessionId']}")
    assert status == 200
    stored.pop("counts")
    assert created == stored
    assert created["scheduledTimestamp"] == at.isoformat()  # in UTC, to the microsecond
