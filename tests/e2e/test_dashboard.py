"""The dashboard (DESIGN §6) in headless Chromium against the real `hub api`: log in through
the form, sessions with live progress, a session's outcomes chart drawn on a canvas (checked
in the pixels of a screenshot), hangup causes, ASR/ACD, the CSV, usage; what another app's
key sees; the login cookie's attributes, revocation and logout."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from hub.store.apps import NewApp, create_app, revoke_key
from tests.browser import Browser, chromium_path, decode_png
from tests.conftest import Procs
from tests.helpers import free_port

pytestmark = pytest.mark.e2e
NOW = datetime.now(UTC).replace(microsecond=0)
# (address, status, outcome, cause, cause text, talk seconds) of the voice session's calls.
CALLS = [
    ("+4930111111", "delivered", "answered", 16, "Normal Clearing", 12.2),
    ("+4930222222", "delivered", "answered", 16, "Normal Clearing", 7.6),
    ("+4930333333", "failed", "busy", 17, "User busy", None),
    ("+4930444444", "failed", "no_answer", 19, "No answer", None),
]
MAILS = [("ann@example.com", "delivered", "delivered"), ("bob@example.com", "failed",
         "permanent_failure"), ("cy@example.com", "pending", None)]


@dataclass
class Seeded:
    acme: NewApp
    other: NewApp
    voice_id: uuid.UUID
    email_id: uuid.UUID
    other_id: uuid.UUID


async def _transport(db: asyncpg.Pool, app_id: uuid.UUID, type_: str) -> uuid.UUID:
    tid = uuid.uuid4()
    await db.execute(
        "INSERT INTO transports (id, app_id, name, type, provider, config, secrets, is_default)"
        " VALUES ($1, $2, $3, $4, 'seed', '{}', '{}', false)", tid, app_id, f"{type_}-{tid}", type_)
    return tid


async def _session(db: asyncpg.Pool, app_id: uuid.UUID, type_: str, xref: str, n: int,
                   created: datetime) -> uuid.UUID:
    sid = uuid.uuid4()
    await db.execute(
        "INSERT INTO sessions (id, app_id, transport_id, transport_type, xref, status, trigger,"
        " instruction, retries, retry_intervals_s, audience_count, duplicates_removed,"
        " created_at, started_at) VALUES ($1, $2, $3, $4, $5, 'running', 'immediate', '{}', 0,"
        " '{}', $6, 0, $7, $7)", sid, app_id, await _transport(db, app_id, type_), type_, xref,
        n, created)
    return sid


async def _delivery(db: asyncpg.Pool, sid: uuid.UUID, address: str, status: str,
                    outcome: str | None, detail: dict[str, Any] | None, at: datetime) -> None:
    final = status in ("delivered", "failed")
    did = await db.fetchval(
        "INSERT INTO deliveries (session_id, address, status, attempts, tries, outcome, detail,"
        " duration_s, error, last_attempt_at) VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9)"
        " RETURNING id", sid, address, status, int(final), outcome, detail,
        (detail or {}).get("talkS"), "failed: " + (outcome or "") if status == "failed" else None,
        at if final else None)
    if final:
        await db.execute(
            "INSERT INTO attempts (id, delivery_id, attempt, started_at, ended_at, outcome, detail)"
            " VALUES ($1, $2, 1, $3, $4, $5, $6)", uuid.uuid4(), did, at - timedelta(seconds=20),
            at, outcome, detail)


@pytest.fixture
async def seeded(db: asyncpg.Pool) -> Seeded:
    acme, other = await create_app(db, "acme"), await create_app(db, "other")
    voice = await _session(db, acme.app_id, "voice", "spring-calls", len(CALLS),
                           NOW - timedelta(minutes=5))
    for address, status, outcome, cause, text, talk in CALLS:
        detail = {"cause": cause, "causeText": text, "ringS": 3.0, "sipCode": None,
                  **({"talkS": talk} if talk else {})}
        await _delivery(db, voice, address, status, outcome, detail, NOW - timedelta(minutes=4))
    email = await _session(db, acme.app_id, "email", "<b>news</b>", len(MAILS),
                           NOW - timedelta(minutes=3))
    for address, status, outcome in MAILS:
        await _delivery(db, email, address, status, outcome, {"smtp": 250} if outcome else None,
                        NOW - timedelta(minutes=2))
    secret = await _session(db, other.app_id, "email", "other-app-secret-xref", 1,
                            NOW - timedelta(minutes=1))
    await _delivery(db, secret, "hidden-person@example.org", "delivered", "delivered", {},
                    NOW - timedelta(minutes=1))
    return Seeded(acme, other, voice, email, secret)


@pytest.fixture
def dashboard(tmp_path: Path, db: asyncpg.Pool) -> Iterator[str]:
    """A `hub api` of its own, polling fast, so each test sees its pages refresh quickly."""
    procs = Procs(tmp_path / "api-logs")
    (tmp_path / "api-logs").mkdir()
    port = free_port()
    procs.api(port, HUB_DASHBOARD_REFRESH_S="0.5")
    yield f"http://127.0.0.1:{port}"
    procs.stop_all()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    if chromium_path() is None:
        pytest.fail("chromium is not installed: scripts/bootstrap.sh system installs it")
    b = await Browser.start(tmp_path / "chromium-profile")
    yield b
    await b.close()


async def _login(browser: Browser, base: str, key: str) -> None:
    await browser.goto(base + "/dashboard")
    await browser.wait_for("location.pathname === '/dashboard/login'")
    await browser.eval(f"document.getElementById('key').value = {json.dumps(key)};"
                       " document.getElementById('login').submit(); true")
    await browser.wait_for("location.pathname === '/dashboard'"
                           " && document.readyState === 'complete'")


def _client() -> aiohttp.ClientSession:
    # unsafe: keep cookies for an IP address host (127.0.0.1)
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _form_login(http: aiohttp.ClientSession, base: str, key: str,
                      **headers: str) -> aiohttp.ClientResponse:
    async with http.post(base + "/dashboard/login", data={"key": key}, headers=headers,
                         allow_redirects=False) as resp:
        await resp.read()
        return resp


async def test_login_form_sessions_and_a_rendered_outcomes_chart(
        seeded: Seeded, dashboard: str, browser: Browser, tmp_path: Path) -> None:
    await _login(browser, dashboard, seeded.acme.api_key)

    # The sessions of this app, with progress, once the page's script has refreshed them.
    await browser.wait_for("document.body.dataset.refreshed")
    rows = await browser.eval(
        "[...document.querySelectorAll('#sessions tbody tr')].map(r => r.innerText)")
    assert len(rows) == 2, rows
    assert "spring-calls" in rows[1] and "voice" in rows[1] and "100%" in rows[1]
    assert "<b>news</b>" in rows[0] and "66.7%" in rows[0]  # shown as text, not markup
    html = await browser.eval("document.documentElement.outerHTML")
    assert "other-app-secret-xref" not in html and str(seeded.other_id) not in html

    # The login cookie: an opaque token (not the key), scoped and locked down.
    (cookie,) = await browser.cookies(dashboard + "/dashboard")
    assert cookie["path"] == "/dashboard" and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and cookie["secure"] is False
    assert seeded.acme.api_key not in cookie["value"]
    assert await browser.eval("document.cookie") == ""
    assert await browser.cookies(dashboard + "/v1/sessions") == []  # not sent to the API

    # One session: the outcomes chart, drawn by the vendored Chart.js.
    await browser.eval(f"document.querySelector('a[href=\"/dashboard/sessions/{seeded.voice_id}\"]')"
                       ".click(); true")
    await browser.wait_for(f"location.pathname === '/dashboard/sessions/{seeded.voice_id}'")
    assert await browser.wait_for("document.getElementById('outcomes').dataset.rendered") == "4"
    painted = await browser.eval(
        "(() => { const c = document.getElementById('outcomes');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n; })()")
    assert painted > 2000, painted
    rect = await browser.eval(
        "(() => { const r = document.getElementById('outcomes').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
    (tmp_path / "dashboard-session.png").write_bytes(await browser.screenshot())
    png = await browser.screenshot(rect)
    (tmp_path / "outcomes-chart.png").write_bytes(png)
    width, height, pixels = decode_png(png)
    assert (width, height) == (640, 280)
    # The bars: saturated colours (answered green, busy/no answer orange); axes are grey.
    green = sum(1 for row in pixels for r, g, b in row if g > 100 and r < 80 and b < 80)
    orange = sum(1 for row in pixels for r, g, b in row if r > 200 and 80 < g < 140 and b < 40)
    assert green > 1000 and orange > 1000, (green, orange)

    # Hangup causes and ASR/ACD of the voice report.
    causes = await browser.eval(
        "[...document.querySelectorAll('#causes tbody tr')].map(r => r.innerText)")
    assert [c.split("\t") for c in causes] == [
        ["16", "Normal Clearing", "2"], ["17", "User busy", "1"], ["19", "No answer", "1"]]
    assert await browser.eval("document.getElementById('asr').innerText") == "50%"
    assert await browser.eval("document.getElementById('acd').innerText") == "9.9"
    recipients = await browser.eval(
        "[...document.querySelectorAll('#recipients-table tbody tr')].map(r => r.innerText)")
    assert [r.split("\t")[0] for r in recipients] == [c[0] for c in CALLS]

    # The CSV link downloads the session report's CSV.
    href = await browser.eval("document.getElementById('csv').getAttribute('href')")
    csv_text = await browser.eval(f"fetch({json.dumps(href)}).then(r => r.text())")
    async with aiohttp.ClientSession() as http, http.get(
            f"{dashboard}/v1/sessions/{seeded.voice_id}/report?format=csv",
            headers={"Authorization": f"Bearer {seeded.acme.api_key}"}) as resp:
        assert csv_text == await resp.text()
    assert csv_text.splitlines()[0].startswith("address,status,attempts,outcome")
    assert csv_text.splitlines().index("") == 1 + len(CALLS)  # rows, a blank line, the summary


async def test_pages_refresh_by_themselves_when_the_database_changes(
        seeded: Seeded, dashboard: str, browser: Browser, db: asyncpg.Pool) -> None:
    await _login(browser, dashboard, seeded.acme.api_key)
    row = f"document.querySelector('#sessions tr[data-session=\"{seeded.email_id}\"]')"
    await browser.wait_for(f"{row} && {row}.innerText.includes('66.7%')")
    await browser.goto(f"{dashboard}/dashboard/sessions/{seeded.email_id}")
    await browser.wait_for("document.getElementById('outcomes').dataset.rendered === '2'")
    assert await browser.eval("document.getElementById('percent').innerText") == "66.7%"

    await db.execute("UPDATE deliveries SET status = 'delivered', outcome = 'delivered',"
                     " attempts = 1, last_attempt_at = now() WHERE session_id = $1"
                     " AND status = 'pending'", seeded.email_id)
    await db.execute("INSERT INTO attempts (id, delivery_id, attempt, ended_at, outcome, detail)"
                     " SELECT $1, id, 1, now(), 'delivered', '{}' FROM deliveries"
                     " WHERE session_id = $2 AND address = 'cy@example.com'",
                     uuid.uuid4(), seeded.email_id)
    # No reload: the page's own polling brings the new figures.
    await browser.wait_for("document.getElementById('percent').innerText === '100%'")
    assert await browser.eval("document.getElementById('counts').innerText") == \
        "delivered 2, failed 1"
    assert await browser.wait_for("document.getElementById('outcomes').dataset.rendered") == "3"
    await browser.goto(f"{dashboard}/dashboard")
    await db.execute("UPDATE sessions SET status = 'completed', ended_at = now() WHERE id = $1",
                     seeded.email_id)
    await browser.wait_for(f"{row} && {row}.innerText.includes('100%')"
                           f" && {row}.innerText.includes('completed')")


async def test_another_apps_key_sees_none_of_the_first_apps_sessions(
        seeded: Seeded, dashboard: str) -> None:
    acme_marks = [str(seeded.voice_id), str(seeded.email_id), "spring-calls", "news",
                  "+4930111111", "ann@example.com"]
    async with _client() as http:
        resp = await _form_login(http, dashboard, seeded.other.api_key)
        assert resp.status == 303
        for path in ("/dashboard", "/dashboard/api/sessions", "/dashboard/api/usage",
                     "/dashboard/api/sessions?transport=voice"):
            async with http.get(dashboard + path) as got:
                text = await got.text()
            assert got.status == 200, (path, text)
            assert not [m for m in acme_marks if m in text], (path, text)
        async with http.get(dashboard + "/dashboard/api/sessions") as got:
            assert [s["xref"] for s in (await got.json())["items"]] == ["other-app-secret-xref"]
        for sid in (seeded.voice_id, seeded.email_id):
            for path in (f"/dashboard/sessions/{sid}", f"/dashboard/sessions/{sid}/report.csv",
                         f"/dashboard/api/sessions/{sid}"):
                async with http.get(dashboard + path) as got:
                    text = await got.text()
                assert got.status == 404, (path, got.status)
                assert not [m for m in acme_marks[2:] if m in text], (path, text)
    # The same with the other key as a bearer token (scripts).
    async with aiohttp.ClientSession() as http:
        bearer = {"Authorization": f"Bearer {seeded.other.api_key}"}
        async with http.get(f"{dashboard}/dashboard/sessions/{seeded.voice_id}",
                            headers=bearer) as got:
            assert got.status == 404 and "text/html" in got.content_type
        async with http.get(f"{dashboard}/dashboard/api/sessions", headers=bearer) as got:
            assert str(seeded.voice_id) not in await got.text()
        bearer = {"Authorization": f"Bearer {seeded.acme.api_key}"}
        async with http.get(f"{dashboard}/dashboard/api/sessions", headers=bearer) as got:
            items = (await got.json())["items"]
        assert {s["id"] for s in items} == {str(seeded.voice_id), str(seeded.email_id)}
        voice = next(s for s in items if s["transport"] == "voice")
        assert voice["counts"] == {"delivered": 2, "failed": 2} and voice["percentDone"] == 100
        async with http.get(f"{dashboard}/dashboard/api/sessions?status=cancelled",
                            headers=bearer) as got:
            assert (await got.json())["items"] == []
        async with http.get(f"{dashboard}/dashboard/api/sessions?transport=email",
                            headers=bearer) as got:
            assert [s["id"] for s in (await got.json())["items"]] == [str(seeded.email_id)]


async def test_usage_panel_figures_come_from_the_records(seeded: Seeded, dashboard: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"{dashboard}/dashboard/api/usage",
            headers={"Authorization": f"Bearer {seeded.acme.api_key}"}) as got:
        items = {u["transport"]: u for u in (await got.json())["items"]}
    day = NOW.date().isoformat()
    if (NOW - timedelta(minutes=5)).date() != NOW.date():
        pytest.skip("seeded across midnight UTC")
    assert items["voice"] == {
        "date": day, "transport": "voice", "sessions": 1, "recipients": 4, "attempts": 4,
        "delivered": 2, "failed": 2, "smsSegments": 0, "callsAnswered": 2,
        "billableSeconds": math.ceil(12.2) + math.ceil(7.6), "inboundCallbacks": 0}
    assert items["email"]["attempts"] == 2 and items["email"]["delivered"] == 1


async def test_login_refusals_and_the_cookie(seeded: Seeded, dashboard: str,
                                             db: asyncpg.Pool) -> None:
    async with _client() as http:
        async with http.get(dashboard + "/dashboard", allow_redirects=False) as got:
            assert got.status == 303 and got.headers["Location"] == "/dashboard/login"
        async with http.get(dashboard + "/dashboard/", allow_redirects=False) as got:
            assert got.status == 303 and got.headers["Location"] == "/dashboard"
        async with http.get(dashboard + "/dashboard/api/sessions") as got:
            assert got.status == 401 and (await got.json())["error_id"] == "login-required"
        async with http.get(dashboard + "/dashboard/login") as got:
            assert got.status == 200 and 'name="key"' in await got.text()

        # A wrong key: the form again, with the reason, 401.
        async with http.post(dashboard + "/dashboard/login", data={"key": "hub_wrong"},
                             allow_redirects=False) as got:
            text = await got.text()
        assert got.status == 401 and 'name="key"' in text and "not valid" in text
        assert "Set-Cookie" not in got.headers
        async with http.post(dashboard + "/dashboard/login", data={"key": ""}) as got:
            assert got.status == 401

        # A form posted from another site is refused, even with a good key.
        resp = await _form_login(http, dashboard, seeded.acme.api_key,
                                 Origin="http://evil.example")
        assert resp.status == 403 and "Set-Cookie" not in resp.headers

        resp = await _form_login(http, dashboard, seeded.acme.api_key, Origin=dashboard)
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
        raw = resp.headers["Set-Cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in raw.split(";")[1:]}
        assert "path=/dashboard" in raw.replace(" ", "").lower() and "httponly" in attrs
        assert "samesite=strict" in raw.replace(" ", "").lower() and "secure" not in attrs
        assert seeded.acme.api_key not in raw
        token = next(c.value for c in http.cookie_jar if c.key == "hub_dashboard")
        stored = await db.fetchval("SELECT token_hash FROM dashboard_logins")
        assert stored == hashlib.sha256(token.encode()).digest()  # only the token's hash
        async with http.get(dashboard + "/dashboard") as got:
            assert got.status == 200 and "spring-calls" in await got.text()
            assert got.headers["Cache-Control"] == "no-store"
            assert "frame-ancestors 'none'" in got.headers["Content-Security-Policy"]

    async with aiohttp.ClientSession() as http:
        for header in ("Bearer hub_wrong", "Basic abc", "Bearer "):
            async with http.get(dashboard + "/dashboard",
                                headers={"Authorization": header}) as got:
                assert got.status == 401 and 'name="key"' in await got.text()
        async with http.get(dashboard + "/dashboard", allow_redirects=False,
                            cookies={"hub_dashboard": "forged-token"}) as got:
            assert got.status == 303


async def test_revoked_key_and_logout_end_the_login_at_once(
        seeded: Seeded, dashboard: str, db: asyncpg.Pool) -> None:
    async with _client() as http:
        assert (await _form_login(http, dashboard, seeded.acme.api_key)).status == 303
        token = next(c.value for c in http.cookie_jar if c.key == "hub_dashboard")
        async with http.get(dashboard + "/dashboard/api/sessions") as got:
            assert got.status == 200
        key_id = await db.fetchval("SELECT id FROM api_keys WHERE app_id = $1",
                                   seeded.acme.app_id)
        assert await revoke_key(db, seeded.acme.app_id, key_id)
        async with http.get(dashboard + "/dashboard/api/sessions") as got:
            assert got.status == 401
        async with http.get(dashboard + "/dashboard", allow_redirects=False) as got:
            assert got.status == 303 and got.headers["Location"] == "/dashboard/login"
        assert (await _form_login(http, dashboard, seeded.acme.api_key)).status == 401
        del token

    async with _client() as http:
        assert (await _form_login(http, dashboard, seeded.other.api_key)).status == 303
        token = next(c.value for c in http.cookie_jar if c.key == "hub_dashboard")
        async with http.post(dashboard + "/dashboard/logout", allow_redirects=False,
                             headers={"Origin": "http://evil.example"}) as got:
            assert got.status == 403
        async with http.post(dashboard + "/dashboard/logout", allow_redirects=False) as got:
            assert got.status == 303 and got.headers["Location"] == "/dashboard/login"
            assert re.search(r"hub_dashboard=\"?\"?;", got.headers["Set-Cookie"])
    async with aiohttp.ClientSession() as http, http.get(
            dashboard + "/dashboard/api/sessions", cookies={"hub_dashboard": token}) as got:
        assert got.status == 401  # the logged-out token is gone server-side too


async def test_secure_cookie_and_origin_behind_an_https_public_url(
        seeded: Seeded, tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    port = free_port()
    procs.api(port, HUB_PUBLIC_URL="https://hub.example.test")
    base = f"http://127.0.0.1:{port}"
    try:
        async with _client() as http:
            resp = await _form_login(http, base, seeded.acme.api_key,
                                     Origin="https://hub.example.test")
            assert resp.status == 303
            attrs = [a.strip().lower() for a in resp.headers["Set-Cookie"].split(";")]
            assert "secure" in attrs
    finally:
        procs.stop_all()


async def test_static_files_and_escaping(seeded: Seeded, dashboard: str) -> None:
    async with aiohttp.ClientSession() as http:
        bearer = {"Authorization": f"Bearer {seeded.acme.api_key}"}
        async with http.get(dashboard + "/dashboard", headers=bearer) as got:
            page = await got.text()
        assert "&lt;b&gt;news&lt;/b&gt;" in page and "<b>news</b>" not in page
        chart_url = re.search(r'src="(/dashboard/static/chart\.umd\.min\.js\?v=\w+)"', page)
        assert chart_url, page
        async with http.get(dashboard + chart_url.group(1)) as got:
            body = await got.read()
            assert got.status == 200 and b"Chart.js v4" in body[:200]
            assert "max-age=31536000" in got.headers["Cache-Control"]
            assert "javascript" in got.content_type
        async with http.get(dashboard + "/dashboard/static/chart.js-LICENSE.md") as got:
            assert got.status == 200 and "MIT License" in await got.text()
        for name in ("..%2Fdashboard.py", "..%2F..%2Fconfig.py", "nothing.js"):
            async with http.get(f"{dashboard}/dashboard/static/{name}") as got:
                assert got.status == 404, name
        async with http.get(f"{dashboard}/dashboard/sessions/not-a-uuid", headers=bearer) as got:
            assert got.status == 404 and "text/html" in got.content_type
        async with http.get(f"{dashboard}/dashboard/api/usage?from=2026-13-01",
                            headers=bearer) as got:
            assert got.status == 400 and (await got.json())["error_id"] == "bad-parameter"
        async with http.get(f"{dashboard}/dashboard?status=bogus", headers=bearer) as got:
            assert got.status == 400 and "text/html" in got.content_type
    await asyncio.sleep(0)


async def test_the_recipients_table_is_paged(seeded: Seeded, dashboard: str,
                                             db: asyncpg.Pool) -> None:
    sid = await _session(db, seeded.acme.app_id, "email", "big", 57, NOW)
    for i in range(57):
        await _delivery(db, sid, f"r{i:02d}@example.com", "pending", None, None, NOW)
    bearer = {"Authorization": f"Bearer {seeded.acme.api_key}"}

    def addresses(page: str) -> list[str]:
        table = page.split('id="recipients-table"')[1].split("</table>")[0]
        return re.findall(r"<td>(r\d\d@example\.com)</td>", table)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{dashboard}/dashboard/sessions/{sid}", headers=bearer) as got:
            first = await got.text()
        assert addresses(first) == [f"r{i:02d}@example.com" for i in range(50)]
        nxt = re.search(r'href="(/dashboard/sessions/[^"?]+\?cursor=[^"]+)">Next page', first)
        assert nxt, first
        async with http.get(dashboard + nxt.group(1).replace("&amp;", "&"),
                            headers=bearer) as got:
            second = await got.text()
        assert addresses(second) == [f"r{i:02d}@example.com" for i in range(50, 57)]
        assert "Next page" not in second and "First page" in second
