"""Inbound provider callbacks. No API key: each request must carry the provider's
signature, checked with the transport's own secret (a forged or unsigned one gets 403)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from hub.api import state as st
from hub.api.body import printable, text_problem
from hub.api.receipts import ReceiptBatcher
from hub.errors import BadRequest, Forbidden, NotFound, detail
from hub.store import suppressions
from hub.store import transports as transports_store
from hub.transports import twilio_signature
from hub.transports.twilio import receipt_result

routes = web.RouteTableDef()
PREFIX = "/v1/callbacks/"
CACHE_TTL_S = 5.0
CACHE_MAX = 1000
TRANSPORT_CACHE = web.AppKey("callback_transports", dict)
RECEIPTS = web.AppKey("receipts", ReceiptBatcher)
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})


async def _transport(request: web.Request, tid: uuid.UUID) -> dict[str, Any] | None:
    """Transports looked up for callbacks, kept a few seconds (callbacks come in floods)."""
    cache = request.app[TRANSPORT_CACHE]
    hit = cache.get(tid)
    if hit is not None and hit[0] > time.monotonic():
        cached: dict[str, Any] | None = hit[1]
        return cached
    found = await transports_store.get_full(st.pool(request), tid)
    if len(cache) > CACHE_MAX:
        cache.clear()
    cache[tid] = (time.monotonic() + CACHE_TTL_S, found)
    return found


async def _form(request: web.Request) -> list[tuple[str, str]]:
    """The callback's form fields, in order (a name may repeat); a body that cannot be
    read as a form is a 400."""
    try:
        form = await request.post()
    except (ValueError, AssertionError, LookupError) as exc:  # aiohttp's multipart parser
        raise BadRequest(f"the body is not a readable form ({type(exc).__name__})",
                         error_id="malformed-body", details=[detail(["body"], "unreadable")]) from None
    pairs = [(k, str(v)) for k, v in form.items()]
    problems = [detail(["body", printable(k)], why) for k, v in pairs
                if (why := text_problem(k) or text_problem(v))]
    if problems:
        raise BadRequest("a form field holds characters that cannot be stored",
                         error_id="malformed-body", details=problems)
    return pairs


async def _signed_twilio(request: web.Request) -> tuple[dict[str, str], dict[str, Any]]:
    try:
        tid = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such transport", error_id="transport-not-found") from None
    transport = await _transport(request, tid)
    if transport is None or transport["provider"] != "twilio":
        raise NotFound("no such Twilio transport", error_id="transport-not-found")
    pairs = await _form(request)
    url = st.settings(request).base_url + request.path_qs  # the public URL Twilio called
    signature = request.headers.get("X-Twilio-Signature", "")
    if not twilio_signature.valid(transport["full_config"]["authToken"], url, pairs, signature):
        raise Forbidden("the X-Twilio-Signature does not match this request",
                        error_id="invalid-signature")
    return dict(pairs), transport


@routes.post("/v1/callbacks/twilio/{id}")
async def twilio_status(request: web.Request) -> web.Response:
    """A message status. It can only touch messages sent through this transport (the one
    whose token signed it) and its account. The answer is 204 whatever became of it
    (applied, ignored, or kept until the message id is recorded): it never tells whether
    a message id exists elsewhere."""
    params, transport = await _signed_twilio(request)
    result = receipt_result(params.get("MessageStatus", ""), params.get("ErrorCode"),
                            params.get("ErrorMessage"))
    account = params.get("AccountSid")
    if account and account != transport["full_config"].get("accountSid"):
        return web.Response(status=204)
    if result is not None and params.get("MessageSid"):
        await request.app[RECEIPTS].submit(transport["id"], params["MessageSid"], result)
    return web.Response(status=204)


@routes.post("/v1/callbacks/twilio/{id}/inbound")
async def twilio_inbound(request: web.Request) -> web.Response:
    """An inbound message; STOP and its synonyms put the sender on the do-not-contact list."""
    params, transport = await _signed_twilio(request)
    if params.get("Body", "").strip().upper() in STOP_WORDS and params.get("From"):
        sender = params["From"].removeprefix("whatsapp:")
        async with st.pool(request).acquire() as conn:
            await suppressions.add_one(conn, transport["app_id"], sender, transport["type"],
                                       "replied STOP")
    return web.Response(text="<Response/>", content_type="application/xml")
