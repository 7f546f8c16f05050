"""The campaign dashboard (DESIGN §6): server-side HTML pages under `/dashboard`, the JSON
their scripts poll, the report CSV and the vendored static files. Every read is scoped to
the viewer's app (another app's session is a 404, as in the API); figures come from the
store and `hub.reports`, never from queries of this module's own."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from hub import constants as c
from hub import reports
from hub.api import state as st
from hub.api.dashboard_auth import PREFIX, data, html_page, pages, redirect
from hub.api.render import STATIC, STATIC_VERSIONS, Markup, asset, escape, join, render, tag
from hub.errors import BadRequest, NotFound, detail
from hub.store import deliveries, sessions, usage

STATIC_MAX_AGE_S = 365 * 24 * 3600
SESSIONS_PER_PAGE = 50
RECIPIENTS_PER_PAGE = 50
USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 366
USAGE_COLUMNS = ("date", "transport", "sessions", "recipients", "attempts", "delivered", "failed",
                 "smsSegments", "callsAnswered", "billableSeconds", "inboundCallbacks")
routes = web.RouteTableDef()


def _page(title: str, body: Markup, request: web.Request, **data_attrs: str) -> web.Response:
    attrs = join([Markup(f' data-{k.replace("_", "-")}="{escape(v)}"')
                  for k, v in data_attrs.items()])
    return html_page(render(
        "layout.html", title=title, body=body, data_attrs=attrs,
        refresh_ms=int(st.settings(request).dashboard_refresh_s * 1000),
        css=asset("dashboard.css"), chart_js=asset("chart.umd.min.js"),
        dashboard_js=asset("dashboard.js")))


def progress(counts: dict[str, int]) -> dict[str, Any]:
    """Counts by status, the total and the share of deliveries in a final state."""
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in c.FINAL_DELIVERY_STATUSES)
    return {"counts": counts, "total": total, "done": done,
            "percentDone": round(100 * done / total, 1) if total else 0.0}


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    return (st.query_choice(request, "status", c.SESSION_STATUSES),
            st.query_choice(request, "transport", c.TRANSPORT_TYPES))


async def _sessions(request: web.Request) -> tuple[list[dict[str, Any]], str | None]:
    status, transport = _filters(request)
    rows, nxt = await sessions.list_(
        st.pool(request), st.app_id(request), limit=SESSIONS_PER_PAGE,
        cursor=request.query.get("cursor"), status=status, transport=transport, xref=None,
        created_from=None, created_to=None)
    counts = await sessions.counts_for(st.pool(request), [r["id"] for r in rows])
    return [{**sessions.view(r), **progress(counts[r["id"]])} for r in rows], nxt


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its per-recipient rows (the page pages through those)."""
    out = {k: v for k, v in report.items() if k != "rows"}
    out["progress"] = progress(report["byStatus"])
    return out


def _usage_range(request: web.Request) -> tuple[date, date]:
    def day(name: str, default: date) -> date:
        raw = request.query.get(name)
        if not raw:
            return default
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a date YYYY-MM-DD", error_id="bad-parameter",
                             details=[detail(["query", name], "invalid")]) from None

    date_to = day("to", datetime.now(UTC).date())
    date_from = day("from", date_to - timedelta(days=USAGE_DEFAULT_DAYS - 1))
    if not timedelta(0) <= date_to - date_from < timedelta(days=USAGE_MAX_DAYS):
        raise BadRequest(f"from must not be after to, and the range at most {USAGE_MAX_DAYS}"
                         " days", error_id="bad-parameter",
                         details=[detail(["query", "from"], "invalid range")])
    return date_from, date_to


# ---- HTML fragments --------------------------------------------------------------------

def _session_rows(items: list[dict[str, Any]]) -> Markup:
    if not items:
        return tag("tr", tag("td", "No sessions.", colspan="7"))
    return join([tag("tr", join([
        tag("td", tag("a", s["id"], href=f"{PREFIX}/sessions/{s['id']}")),
        tag("td", s["xref"] or ""),
        tag("td", s["transport"]),
        tag("td", s["status"], class_=f"status {s['status']}"),
        tag("td", _counts_text(s["counts"])),
        tag("td", tag("progress", f"{s['percentDone']}%", value=s["percentDone"], max="100")
            + Markup(" ") + tag("span", f"{s['percentDone']}%", class_="pct")),
        tag("td", s["createdAt"]),
    ]), data_session=s["id"]) for s in items])


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"


def _options(choices: tuple[str, ...], chosen: str | None) -> Markup:
    return join([tag("option", "all", value="")] + [
        tag("option", ch, value=ch, selected="selected" if ch == chosen else None)
        for ch in choices])


def _usage_rows(items: list[dict[str, Any]]) -> Markup:
    if not items:
        return tag("tr", tag("td", "No usage in this range.", colspan=str(len(USAGE_COLUMNS))))
    return join([tag("tr", join([tag("td", u[k]) for k in USAGE_COLUMNS])) for u in items])


def _recipient_rows(items: list[dict[str, Any]]) -> Markup:
    if not items:
        return tag("tr", tag("td", "No recipients.", colspan="7"))
    return join([tag("tr", join([
        tag("td", d["address"]), tag("td", d["status"]), tag("td", d["attempts"]),
        tag("td", d["outcome"] or ""),
        tag("td", "" if d["durationS"] is None else f"{d['durationS']:.1f}"),
        tag("td", d["lastAttemptAt"] or ""), tag("td", d["error"] or ""),
    ])) for d in items])


def _voice(report: dict[str, Any]) -> Markup:
    voice = report.get("voice")
    if voice is None:
        return Markup("")
    causes = join([tag("tr", join([tag("td", "" if h["cause"] is None else h["cause"]),
                                   tag("td", h["text"] or ""), tag("td", h["calls"])]))
                   for h in voice["hangupCauses"]]) or tag("tr", tag("td", "None yet.",
                                                                     colspan="3"))
    return Markup(render("voice.html", asr=f"{voice['asr']:.0%}", acd=f"{voice['acdS']:.1f}",
                         ring=f"{voice['meanRingS']:.1f}", causes=causes))


# ---- pages -----------------------------------------------------------------------------

@routes.get(PREFIX)
@pages
async def sessions_page(request: web.Request) -> web.StreamResponse:
    status, transport = _filters(request)
    items, nxt = await _sessions(request)
    date_from, date_to = _usage_range(request)
    used = await usage.daily(st.pool(request), st.app_id(request), date_from, date_to)
    more = tag("a", "Older sessions →", href=f"{PREFIX}?" + "&".join(
        f"{k}={v}" for k, v in (("status", status), ("transport", transport), ("cursor", nxt))
        if v)) if nxt else Markup("")
    body = Markup(render(
        "sessions.html", rows=_session_rows(items), more=more,
        status_options=_options(c.SESSION_STATUSES, status),
        transport_options=_options(c.TRANSPORT_TYPES, transport),
        usage_from=date_from.isoformat(), usage_to=date_to.isoformat(),
        usage_rows=_usage_rows(used)))
    return _page("Sessions", body, request, page="sessions",
                 query=request.query_string)


@routes.get(PREFIX + "/")
async def slash(request: web.Request) -> web.StreamResponse:
    return redirect(PREFIX)


@routes.get(PREFIX + "/sessions/{id}")
@pages
async def session_page(request: web.Request) -> web.StreamResponse:
    row = await st.own_session(request)
    report = _summary(await reports.build(st.pool(request), row))
    items, nxt = await deliveries.list_(st.pool(request), row["id"], limit=RECIPIENTS_PER_PAGE,
                                        cursor=request.query.get("cursor"), status=None,
                                        address=None)
    s, prog = report["session"], report["progress"]
    base = f"{PREFIX}/sessions/{row['id']}"
    pager = join([tag("a", "First page", href=base) if request.query.get("cursor") else
                  Markup(""), Markup(" "),
                  tag("a", "Next page →", href=f"{base}?cursor={nxt}") if nxt else Markup("")])
    body = Markup(render(
        "session.html", id=s["id"], xref=s["xref"] or "—", transport=s["transport"],
        status=s["status"], created=s["createdAt"], counts=_counts_text(prog["counts"]),
        percent=f"{prog['percentDone']}%", percent_value=prog["percentDone"],
        recipients=report["recipients"], attempts=report["attempts"],
        csv=f"{base}/report.csv", voice=_voice(report), rows=_recipient_rows(items),
        pager=pager))
    return _page(f"Session {s['id']}", body, request, page="session", session=s["id"])


@routes.get(PREFIX + "/sessions/{id}/report.csv")
@pages
async def report_csv(request: web.Request) -> web.StreamResponse:
    row = await st.own_session(request)
    built = await reports.build(st.pool(request), row)
    return web.Response(text=reports.to_csv(built), content_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="session-{row["id"]}.csv"',
        "Cache-Control": "no-store"})


# ---- JSON the pages poll ---------------------------------------------------------------

@routes.get(PREFIX + "/api/sessions")
@data
async def sessions_data(request: web.Request) -> web.StreamResponse:
    items, nxt = await _sessions(request)
    return st.page(items, nxt)


@routes.get(PREFIX + "/api/sessions/{id}")
@data
async def session_data(request: web.Request) -> web.StreamResponse:
    row = await st.own_session(request)
    return web.json_response(_summary(await reports.build(st.pool(request), row)))


@routes.get(PREFIX + "/api/usage")
@data
async def usage_data(request: web.Request) -> web.StreamResponse:
    date_from, date_to = _usage_range(request)
    items = await usage.daily(st.pool(request), st.app_id(request), date_from, date_to)
    return web.json_response({"from": date_from.isoformat(), "to": date_to.isoformat(),
                              "items": items})


@routes.get(PREFIX + "/static/{name}")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_VERSIONS:  # only the files shipped in static/, by name
        raise NotFound(f"no static file {name!r}")
    return web.FileResponse(STATIC / name, headers={
        "Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}, immutable",
        "X-Content-Type-Options": "nosniff"})

