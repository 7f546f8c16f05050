"""Email broadcasts end to end: one cc/bcc copy per session, attachments fetched once per
session and kept in PostgreSQL, attachment fetch failures handled at session level."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from hub.dev.smtp import SmtpSink
from tests.conftest import Procs
from tests.helpers import Api, local_server

pytestmark = pytest.mark.e2e

PDF = b"%PDF-1.4 quarterly figures"


def email(audience: list[str], extras: dict[str, Any] | None = None,
          **options: Any) -> dict[str, Any]:
    return {"transport": {"type": "email", "subject": "Hello", "message": "Body text",
                          "extras": extras or {}},
            "audience": audience, "options": options}


@dataclass
class FileServer:
    """Serves one PDF; `fail_next` answers 503 that many times first; counts every hit."""

    base: str = ""
    hits: int = 0
    fail_next: int = 0
    status: int = 200
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.paths.append(request.path)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="busy")
        if self.status != 200:
            return web.Response(status=self.status, text="no")
        return web.Response(body=PDF, content_type="application/pdf")


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    server = FileServer()
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner, server.base = await local_server(app)
    yield server
    await runner.cleanup()


async def test_cc_and_bcc_get_one_copy_per_session(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    db: Any,
) -> None:
    _, sink = smtp_sink
    status, body = await api.post("/v1/suppressions", {"addresses": ["optout@example.com"]})
    assert status == 201
    procs.worker()
    audience = [f"r{i}@example.com" for i in range(20)]
    created = await api.submit(email(audience, {
        "cc": ["Boss <Boss@Example.com>", "r3@example.com"],  # r3 is in the audience
        "bcc": ["audit@example.com", "boss@example.com", "optout@example.com"],
        "replyTo": "office@example.com"}))
    assert created["audienceCount"] == 20
    done = await api.wait_status(created["sessionId"])
    # the copies are deliveries of the session: 20 + boss + audit delivered, optout suppressed
    assert done["counts"] == {"delivered": 22, "failed": 1}

    assert sink.duplicates() == {}
    got = {r.rcpt: r.message for r in sink.received}
    assert set(got) == {*audience, "boss@example.com", "audit@example.com"}
    for addr in audience:
        msg = got[addr]
        assert msg["To"] == addr and msg["Cc"] is None and msg["X-Hub-Copy"] is None
        assert msg["Reply-To"] == "office@example.com"
    assert got["boss@example.com"]["To"] == "boss@example.com"
    assert got["boss@example.com"]["X-Hub-Copy"] == "cc"
    assert got["audit@example.com"]["To"] == "audit@example.com"
    assert got["audit@example.com"]["X-Hub-Copy"] == "bcc"
    assert got["audit@example.com"]["Bcc"] is None

    rows = await api.deliveries(created["sessionId"])
    assert {a: r["role"] for a, r in rows.items() if r["role"] != "to"} == {
        "boss@example.com": "cc", "audit@example.com": "bcc", "optout@example.com": "bcc"}
    assert rows["r3@example.com"]["role"] == "to"
    assert rows["optout@example.com"]["outcome"] == "suppressed"
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 23


@pytest.mark.timeout(90)
async def test_attachment_fetched_once_per_session_across_workers_and_retries(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    files: FileServer, db: Any,
) -> None:
    _, sink = smtp_sink
    audience = [f"m{i}@example.com" for i in range(300)]
    for addr in audience[::30]:  # ten recipients need a second run of the session
        sink.scripts[addr] = ["451 4.3.0 try later"]
    procs.worker()
    procs.worker()
    created = await api.submit(email(audience, {
        "attachments": [{"url": f"{files.base}/figures.pdf", "filename": "Q3 figures.pdf"}]},
        retries=1, retryIntervalMinutes="0.02"))
    done = await api.wait_status(created["sessionId"], timeout_s=60)
    assert done["counts"] == {"delivered": 300}
    assert files.hits == 1, files.paths
    assert sink.duplicates() == {}
    for received in sink.received:
        parts = {p.get_content_type(): p for p in received.message.walk()}
        assert parts["application/pdf"].get_filename() == "Q3 figures.pdf"
        assert parts["application/pdf"].get_payload(decode=True) == PDF
    assert await db.fetchval("SELECT count(*) FROM blobs") == 1


async def test_attachment_server_unavailable_is_retried_for_the_session(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    files: FileServer,
) -> None:
    _, sink = smtp_sink
    files.fail_next = 2
    procs.worker()
    created = await api.submit(email(["x@example.com", "y@example.com"], {
        "attachments": [{"url": f"{files.base}/figures.pdf"}]}))
    done = await api.wait_status(created["sessionId"], timeout_s=60)
    assert done["counts"] == {"delivered": 2}
    assert files.hits == 3
    rows = await api.deliveries(created["sessionId"])
    assert all(r["attempts"] == 1 for r in rows.values())  # no try spent on the outage


async def test_unusable_attachment_fails_the_session_without_leaking_credentials(
    api: Api, email_transport: dict[str, Any], smtp_sink: tuple[int, SmtpSink], procs: Procs,
    files: FileServer,
) -> None:
    _, sink = smtp_sink
    files.status = 404
    procs.worker()
    url = files.base.replace("http://", "http://reports:hunter2-secret@") + "/q3.pdf?token=abc123"
    created = await api.submit(email(["x@example.com", "y@example.com"], {
        "attachments": [{"url": url}]}, retries=3))
    done = await api.wait_status(created["sessionId"], timeout_s=30)
    assert done["counts"] == {"failed": 2}
    assert sink.received == []
    for row in (await api.deliveries(created["sessionId"])).values():
        assert "HTTP 404" in row["error"]
        assert "hunter2" not in row["error"] and "abc123" not in row["error"], row["error"]
