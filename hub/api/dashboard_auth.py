"""Who is looking at the dashboard: the API key in `Authorization: Bearer` (scripts) or a
login cookie (browsers). The login form trades a valid key for an opaque token kept in a
cookie scoped to `/dashboard` (HttpOnly, SameSite=Strict, Secure over https); the key
itself never goes into the cookie. Form posts must come from the dashboard's own origin."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from hub.api import state as st
from hub.api.render import asset, render
from hub.errors import Forbidden, HubError, Unauthorized, UnsupportedMediaType
from hub.store import apps, dashboard_logins

PREFIX = "/dashboard"
COOKIE = "hub_dashboard"
MAX_KEY_CHARS = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
                               " img-src 'self' data:; connect-src 'self'; form-action 'self';"
                               " frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


def _usable(token: str) -> bool:
    return 0 < len(token) <= MAX_KEY_CHARS and token.isascii() and token.isprintable()


async def viewer(request: web.Request) -> uuid.UUID | None:
    """The app whose data this request may see, or None."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not _usable(key):
            return None
        return await apps.app_for_key(st.pool(request), key)
    token = request.cookies.get(COOKIE, "")
    if not _usable(token):
        return None
    return await dashboard_logins.app_for_token(st.pool(request), token)


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def html_page(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html",
                        headers=SECURITY_HEADERS)


def login_page(error: str = "", status: int = 200) -> web.Response:
    return html_page(render("login.html", error=error, error_class="error" if error else "hidden",
                            css=asset("dashboard.css")), status)


def error_page(err: HubError) -> web.Response:
    return html_page(render("error.html", status=err.status, message=err.message,
                            css=asset("dashboard.css")), err.status)


def pages(handler: Handler) -> Handler:
    """An HTML page: login first (a redirect, or 401 with the form for a bad bearer key);
    errors become an HTML page with their status."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        app_id = await viewer(request)
        if app_id is None:
            if "Authorization" in request.headers:
                return login_page("the API key is not valid", 401)
            return redirect(f"{PREFIX}/login")
        request[st.APP_ID] = app_id
        try:
            return await handler(request)
        except HubError as err:
            return error_page(err)
    return wrapped


def data(handler: Handler) -> Handler:
    """A JSON endpoint of the dashboard's own pages: 401 JSON without a login."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        app_id = await viewer(request)
        if app_id is None:
            raise Unauthorized("log in at /dashboard/login or send 'Authorization: Bearer"
                               " <api key>'", error_id="login-required")
        request[st.APP_ID] = app_id
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        return response
    return wrapped


def _secure(request: web.Request) -> bool:
    return request.secure or st.settings(request).public_url.lower().startswith("https://")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(request: web.Request) -> None:
    """A form post from another site is refused. Browsers send `Origin` on every POST;
    clients that send none (scripts) are not browsers and carry no ambient cookie risk."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    allowed = {f"{request.scheme}://{request.host}".lower()}
    if st.settings(request).public_url:
        allowed.add(_origin(st.settings(request).public_url))
    if origin.lower() not in allowed:
        raise Forbidden(f"a form post from {origin!r} is refused: post from the dashboard"
                        " itself", error_id="cross-origin-post")


async def _form_key(request: web.Request) -> str:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise UnsupportedMediaType("post the login form (application/x-www-form-urlencoded)")
    form = await request.post()
    key = form.get("key")
    return key.strip() if isinstance(key, str) else ""


@routes.get(f"{PREFIX}/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    return login_page()


@routes.post(f"{PREFIX}/login")
async def login(request: web.Request) -> web.StreamResponse:
    try:
        check_origin(request)
        key = await _form_key(request)
    except HubError as err:
        return login_page(err.message, err.status)
    if not key:
        return login_page("enter the app's API key", 401)
    settings = st.settings(request)
    token = await dashboard_logins.open_login(st.pool(request), key, settings.dashboard_login_s) \
        if _usable(key) else None
    if token is None:
        return login_page("the API key is not valid (or it was revoked)", 401)
    response = redirect(PREFIX)
    response.set_cookie(COOKIE, token, path=PREFIX, httponly=True, samesite="Strict",
                        secure=_secure(request), max_age=int(settings.dashboard_login_s))
    return response


@routes.post(f"{PREFIX}/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    try:
        check_origin(request)
    except HubError as err:
        return error_page(err)
    token = request.cookies.get(COOKIE, "")
    if _usable(token):
        await dashboard_logins.close_login(st.pool(request), token)
    response = redirect(f"{PREFIX}/login")
    response.del_cookie(COOKIE, path=PREFIX)
    return response
