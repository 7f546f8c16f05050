"""The trust boundary (DESIGN §3) with the guard on, as production runs: this module's
`hub api` and `hub worker` run with HUB_ALLOW_PRIVATE_URLS=false. Every private form is
refused for every transport URL field at registration, hosts-file names at send time; a
counting listener on loopback proves nothing behind the guard is ever reached. Only
127.0.0.1 and ::1 are used."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from hub.dev.smtp import SmtpSink
from tests.conftest import SLACK_TOKEN, TWILIO_SID, TWILIO_TOKEN, Procs
from tests.helpers import Api, free_port
from tests.netfakes import Listener, Redirector, hosts_entries

pytestmark = pytest.mark.e2e

TRUSTED = "redirector.test,relay.test"
PRIVATE_HOSTS = ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "[::1]",
                 "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::7f00:1]",
                 "[2002:7f00:1::]", "[::7f00:1]", "localhost"]


@pytest.fixture
def names() -> Iterator[None]:
    with hosts_entries("internal-svc.test", "redirector.test", "relay.test"):
        yield


GuardedApi = Callable[..., Awaitable[Api]]


@pytest.fixture
def guarded(procs: Procs, http: aiohttp.ClientSession, make_app: Any, names: None
            ) -> GuardedApi:
    """Our own `hub api` (and, on request, a worker) with the guard on; only the hosts
    in TRUSTED are exempt."""
    async def start(worker: bool = False) -> Api:
        env = {"HUB_ALLOW_PRIVATE_URLS": "false", "HUB_TRUSTED_HOSTS": TRUSTED}
        port = free_port()
        procs.api(port, **env)
        if worker:
            procs.worker(**env)
        return Api(http, f"http://127.0.0.1:{port}", await make_app("tenant"))

    return start


def configs(host: str, port: int) -> dict[str, tuple[str, dict[str, Any], str]]:
    """One registration per transport URL field: name → (type, config, field)."""
    url = f"http://{host}:{port}"
    smtp_host = host.removeprefix("[").removesuffix("]")
    return {
        "api-url": ("api", {"url": f"{url}/send", "body": {"to": "{{address}}"}}, "url"),
        "slack-webhook": ("slack", {"webhookUrl": f"{url}/services/T0/B0/XSECRETX"},
                          "webhookUrl"),
        "slack-base": ("slack", {"token": SLACK_TOKEN, "baseUrl": f"{url}/api"}, "baseUrl"),
        "twilio-base": ("sms", {"accountSid": TWILIO_SID, "authToken": TWILIO_TOKEN,
                                "from": "+14155550100", "baseUrl": url}, "baseUrl"),
        "smtp-host": ("email", {"host": smtp_host, "port": port,
                                "from": "hub@example.com"}, "host"),
    }


async def test_every_private_form_is_refused_at_registration_for_every_field(
    guarded: GuardedApi, listener: Listener,
) -> None:
    api = await guarded()
    for host in PRIVATE_HOSTS:
        for name, (type_, config, field) in configs(host, listener.port).items():
            status, body = await api.post("/v1/transports", {"name": name, "type": type_,
                                                             "config": config})
            assert status == 422, (host, name, body)
            assert body["error_id"] == "invalid-transport-config"
            assert {"loc": ["config", field], "msg": "not an allowed destination"} in \
                body["details"], (host, name, body)
    status, body = await api.get("/v1/transports")
    assert body["items"] == []
    # The instruction's URL fields, the same function with the same answers.
    for host in PRIVATE_HOSTS:
        url = f"http://{host}:{listener.port}/a"
        for part, loc in (({"type": "voice", "fileUrl": url}, ["transport", "fileUrl"]),
                          ({"type": "sms", "message": "hi", "extras": {"mediaUrl": [url]}},
                           ["transport", "extras", "mediaUrl", 0]),
                          ({"type": "email", "subject": "s", "message": "m",
                            "extras": {"attachments": [{"url": url}]}},
                           ["transport", "extras", "attachments", 0, "url"])):
            status, body = await api.post("/v1/sessions", {
                "transport": part, "audience": ["+14155550101" if part["type"] != "email"
                                                else "a@example.com"],
                "options": {"webhookUrl": url}})
            assert status == 422, (host, part, body)
            got = {tuple(d["loc"]): d["msg"] for d in body["details"]}
            assert got[tuple(loc)] == "not an allowed destination", (host, body)
            assert got[("options", "webhookUrl")] == "not an allowed destination", (host, body)
    assert listener.count == 0


async def test_a_hosts_file_name_is_refused_at_send_time_and_never_reached(
    guarded: GuardedApi, listener: Listener,
) -> None:
    api = await guarded(worker=True)
    sessions = {}
    for name, (type_, config, _) in configs("internal-svc.test", listener.port).items():
        status, body = await api.post("/v1/transports", {"name": name, "type": type_,
                                                         "config": config})
        assert status == 201, (name, body)  # a name is only known when connecting
        part: dict[str, Any] = {"type": type_, "message": "hello",
                                "extras": {"transport": name}}
        audience = ["C0ALERTS"] if type_ == "slack" else ["+14155550101"]
        if type_ == "email":
            part["subject"], audience = "Hello", ["a@example.com"]
        created = await api.submit({"transport": part, "audience": audience,
                                    "options": {"retries": 2, "retryIntervalMinutes": "0.01"}})
        sessions[name] = created["sessionId"]
    for name, sid in sessions.items():
        done = await api.wait_status(sid, timeout_s=30)
        assert done["counts"] == {"failed": 1}, (name, done)
        [row] = (await api.deliveries(sid)).values()
        assert row["attempts"] == 1, (name, row)  # a refusal is final, not retried
        assert "not an allowed destination" in row["error"], (name, row)
        assert "127.0.0.1" not in str(row) and "XSECRETX" not in str(row), (name, row)
    assert listener.count == 0


async def test_a_redirect_to_a_loopback_port_is_refused(
    guarded: GuardedApi, listener: Listener, smtp_sink: tuple[int, SmtpSink],
) -> None:
    """The first hop is a trusted name; its 302 to a loopback port is never followed."""
    redirector = Redirector(f"http://127.0.0.1:{listener.port}/internal")
    await redirector.start()
    try:
        api = await guarded(worker=True)
        base = f"http://redirector.test:{redirector.port}"
        smtp_port, sink = smtp_sink
        for name, type_, config in (
            ("gateway", "api", {"url": f"{base}/send", "body": {"to": "{{address}}"}}),
            ("hook", "slack", {"webhookUrl": f"{base}/services/T0/B0/XSECRETX"}),
            ("echo-hook", "slack", {"webhookUrl": f"{base}/echo/T0/B0/XSECRETX"}),
            ("relay", "email", {"host": "relay.test", "port": smtp_port,
                                "from": "hub@example.com"}),
        ):
            status, body = await api.post("/v1/transports", {"name": name, "type": type_,
                                                             "config": config})
            assert status == 201, (name, body)
        sids = {}
        for name, part, audience in (
            ("gateway", {"type": "api", "message": "m"}, ["+14155550101"]),
            ("hook", {"type": "slack", "message": "m"}, ["C0ALERTS"]),
            ("echo-hook", {"type": "slack", "message": "m"}, ["C0ALERTS"]),
            ("relay", {"type": "email", "subject": "s", "message": "m",
                       "extras": {"attachments": [{"url": f"{base}/report.pdf"}]}},
             ["a@example.com"]),
        ):
            part["extras"] = {**part.get("extras", {}), "transport": name}
            sids[name] = (await api.submit({"transport": part, "audience": audience}))[
                "sessionId"]
        for name, sid in sids.items():
            done = await api.wait_status(sid, timeout_s=30)
            assert done["counts"] == {"failed": 1}, (name, done)
            [row] = (await api.deliveries(sid)).values()
            assert "XSECRETX" not in str(row), (name, row)  # a write-only webhook URL
            assert "internal" not in str(row.get("detail")), (name, row)
        assert {p.split("/")[1] for p in redirector.hits} >= {"send", "services", "echo",
                                                              "report.pdf"}
        assert listener.count == 0  # no hop reached the loopback port
        assert sink.received == []  # the attachment never came: nothing was sent
    finally:
        await redirector.stop()


async def test_a_trusted_relay_delivers_while_the_guard_stays_on(
    guarded: GuardedApi, listener: Listener, smtp_sink: tuple[int, SmtpSink],
) -> None:
    api = await guarded(worker=True)
    smtp_port, sink = smtp_sink
    for name, host, port in (("relay", "relay.test", smtp_port),
                             ("internal", "internal-svc.test", listener.port)):
        status, body = await api.post("/v1/transports", {"name": name, "type": "email",
                                                         "config": {"host": host, "port": port,
                                                                    "from": "hub@example.com"}})
        assert status == 201, body
    status, body = await api.post("/v1/transports", {"name": "direct", "type": "email",
                                                     "config": {"host": "127.0.0.1",
                                                                "port": smtp_port,
                                                                "from": "hub@example.com"}})
    assert status == 422 and body["details"][0]["loc"] == ["config", "host"], body
    relayed = await api.submit({"transport": {"type": "email", "subject": "Hi", "message": "m",
                                              "extras": {"transport": "relay"}},
                                "audience": ["a@example.com", "b@example.com"]})
    blocked = await api.submit({"transport": {"type": "email", "subject": "Hi", "message": "m",
                                              "extras": {"transport": "internal"}},
                                "audience": ["c@example.com"]})
    assert (await api.wait_status(relayed["sessionId"]))["counts"] == {"delivered": 2}
    assert (await api.wait_status(blocked["sessionId"]))["counts"] == {"failed": 1}
    assert sorted(r.rcpt for r in sink.received) == ["a@example.com", "b@example.com"]
    assert listener.count == 0
