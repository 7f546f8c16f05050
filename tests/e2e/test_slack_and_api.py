"""Slack (Web API and incoming webhooks) and the generic HTTP API transport, each through
the API and worker processes against local fakes speaking the real wire format."""

from __future__ import annotations

from typing import Any

import pytest

from hub.dev.fake_http import FakeSlack, HttpSink
from tests.conftest import SLACK_TOKEN, Procs
from tests.helpers import Api

pytestmark = pytest.mark.e2e


async def register(api: Api, name: str, type_: str, config: dict[str, Any]) -> dict[str, Any]:
    status, body = await api.post("/v1/transports", {"name": name, "type": type_,
                                                     "config": config})
    assert status == 201, body
    return dict(body)


def instruction(type_: str, audience: list[str], message: str = "Deploy finished",
                extras: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    transport: dict[str, Any] = {"type": type_, "message": message}
    if extras:
        transport["extras"] = extras
    return {"transport": transport, "audience": audience, "options": options}


async def test_slack_posts_to_channels_and_honours_rate_limits(
    api: Api, fake_slack: FakeSlack, procs: Procs,
) -> None:
    transport = await register(api, "slack", "slack", {
        "token": SLACK_TOKEN, "baseUrl": fake_slack.url + "/api"})
    assert "token" not in transport["config"]
    fake_slack.scripts["C0RATE"] = ["ratelimited:2"]
    fake_slack.scripts["C0GONE"] = ["error:channel_not_found"]
    procs.worker()
    created = await api.submit(instruction("slack", ["C0OK", "C0RATE", "C0GONE"]))  # retries=0
    done = await api.wait_status(created["sessionId"], timeout_s=30)
    assert done["counts"] == {"delivered": 2, "failed": 1}
    rows = await api.deliveries(created["sessionId"])
    assert rows["C0OK"]["providerRef"].startswith("C0OK/")
    assert rows["C0GONE"]["error"] == "Slack: channel_not_found"
    rate = [s for s in fake_slack.posts() if s.body["channel"] == "C0RATE"]
    assert len(rate) == 2 and rate[1].at - rate[0].at >= 1.9  # waited as told, no retry spent
    assert rows["C0RATE"]["status"] == "delivered"
    assert all(s.headers["Authorization"] == f"Bearer {SLACK_TOKEN}" for s in fake_slack.posts())
    assert {s.body["text"] for s in fake_slack.posts()} == {"Deploy finished"}


async def test_slack_incoming_webhook(api: Api, fake_slack: FakeSlack, procs: Procs) -> None:
    await register(api, "hook", "slack", {"webhookUrl": fake_slack.url + "/hooks/T000/B000"})
    procs.worker()
    created = await api.submit(instruction("slack", ["#alerts"], message="Disk at 91%"))
    done = await api.wait_status(created["sessionId"])
    assert done["counts"] == {"delivered": 1}
    [post] = fake_slack.posts()
    assert post.path == "/hooks/T000/B000" and post.body == {"text": "Disk at 91%",
                                                             "channel": "#alerts"}


async def test_api_transport_templates_each_recipient(
    api: Api, sink: HttpSink, procs: Procs,
) -> None:
    transport = await register(api, "gateway", "api", {
        "url": sink.url + "/send", "headers": {"X-Api-Key": "gw-secret-123"},
        "body": {"to": "{{address}}", "text": "{{message}}", "sender": "{{extras.sender}}",
                 "ref": "hub-{{attempt}}"},
        "success": {"path": "$.ok", "equals": True}, "idPath": "$.id"})
    assert "headers" not in transport["config"]
    procs.worker()
    created = await api.submit(instruction("api", ["+9779812345678", "+9779812345679"],
                                           message="Camp on Friday",
                                           extras={"sender": "WARD-5"}))
    done = await api.wait_status(created["sessionId"])
    assert done["counts"] == {"delivered": 2}
    bodies = {s.body["to"]: s for s in sink.seen}
    first = bodies["+9779812345678"]
    assert first.body["text"] == "Camp on Friday" and first.body["sender"] == "WARD-5"
    assert first.body["ref"].startswith("hub-") and first.headers["X-Api-Key"] == "gw-secret-123"
    rows = await api.deliveries(created["sessionId"])
    assert {r["providerRef"] for r in rows.values()} <= {"msg-1", "msg-2"}


async def test_api_transport_bulk_and_form_and_success_rule(
    api: Api, sink: HttpSink, procs: Procs,
) -> None:
    await register(api, "bulk", "api", {
        "url": sink.url + "/bulk", "bulk": {"max": 50},
        "body": {"message": "{{message}}", "messages": ["{{each}}", {"to": "{{address}}"}]},
        "idPath": "$.results[*].id"})
    procs.worker()
    audience = [f"+97798123450{i:02d}" for i in range(10)]
    created = await api.submit(instruction("api", audience))
    await api.wait_status(created["sessionId"])
    assert len(sink.seen) < 10  # batches, not one request per recipient
    sent = [m["to"] for s in sink.seen for m in s.body["messages"]]
    assert sorted(sent) == sorted(audience)
    rows = await api.deliveries(created["sessionId"])
    assert all(r["providerRef"] and r["status"] == "delivered" for r in rows.values())

    await register(api, "form", "api", {"url": sink.url + "/form", "bodyType": "form",
                                        "body": {"to": "{{address}}", "msg": "{{message}}"},
                                        "success": {"path": "$.ok", "equals": True}})
    sink.seen.clear()
    sink.answer = {"ok": False, "reason": "blocked"}
    created = await api.submit(instruction("api", ["+9779812345600"], retries=2,
                                           extras={"transport": "form"}))
    await api.wait_status(created["sessionId"])
    [seen] = sink.seen
    assert seen.body == {"to": "+9779812345600", "msg": "Deploy finished"}
    row = (await api.deliveries(created["sessionId"]))["+9779812345600"]
    assert row["status"] == "failed" and row["attempts"] == 1 and "$.ok" in row["error"]


async def test_messages_per_second_limit(api: Api, sink: HttpSink, procs: Procs) -> None:
    await register(api, "slow", "api", {"url": sink.url + "/m", "mps": 4,
                                        "body": {"to": "{{address}}"}})
    procs.worker()
    created = await api.submit(instruction("api", [f"+97798123451{i:02d}" for i in range(12)]))
    await api.wait_status(created["sessionId"], timeout_s=30)
    stamps = sorted(s.at for s in sink.seen)
    assert len(stamps) == 12
    # Any 1.0 s window holds at most 4 requests spaced 0.25 s apart, plus 1 whose request
    # jitter lands it on the window's closing edge: no burst at a window boundary.
    for i, start in enumerate(stamps):
        within = [t for t in stamps[i:] if t < start + 1.0]
        assert len(within) <= 4 + 1, (start, within)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps) >= 0.25 - 0.05, gaps  # one slot each, 0.05 s for request jitter


@pytest.mark.timeout(60)
async def test_messages_per_second_below_one(api: Api, sink: HttpSink, procs: Procs) -> None:
    await register(api, "trickle", "api", {"url": sink.url + "/m", "mps": 0.5,
                                           "body": {"to": "{{address}}"}})
    procs.worker()
    created = await api.submit(instruction("api", [f"+97798123452{i:02d}" for i in range(5)]))
    await api.wait_status(created["sessionId"], timeout_s=40)
    stamps = sorted(s.at for s in sink.seen)
    assert len(stamps) == 5
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps) >= 2.0 - 0.1, gaps  # one message every 2 s
    assert stamps[-1] - stamps[0] >= 4 * 2.0 - 0.1
