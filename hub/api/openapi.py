"""OpenAPI 3.1: request bodies generated from the same pydantic models that validate them;
responses described by hand (media types as served: JSON, CSV, Prometheus text, TwiML)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from hub import __version__
from hub import constants as c
from hub.api.apps import AppIn, TrunkGrantIn
from hub.api.state import MAX_LIMIT
from hub.api.suppressions import SuppressionIn
from hub.api.transports import TransportIn, TransportPatch
from hub.instruction import Instruction

REF = "#/components/schemas/{model}"
_INPUTS: list[type[BaseModel]] = [Instruction, TransportIn, TransportPatch, AppIn, SuppressionIn,
                                   TrunkGrantIn]

_STR = {"type": "string"}
_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_INT = {"type": "integer", "minimum": 0}


def _ref(model: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=model)}


def _object(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": properties}


_ERROR = _object(("error_id", "message"), error_id=_STR, message=_STR, details={})
_SESSION = _object(
    ("id", "sessionId", "status", "transport", "audienceCount", "createdAt"),
    id=_UUID, sessionId=_UUID, status={"enum": list(c.SESSION_STATUSES)},
    transport={"enum": list(c.TRANSPORT_TYPES)}, transportId=_UUID, trigger=_STR,
    xref=_NULLABLE_STR, audienceCount=_INT, duplicatesRemoved=_INT, retries=_INT,
    retryIntervalMinutes=_STR, webhookUrl=_NULLABLE_STR, run={"type": "integer"},
    createdAt=_TIME, scheduledTimestamp=_NULLABLE_TIME, startedAt=_NULLABLE_TIME,
    endedAt=_NULLABLE_TIME,
    counts={"type": "object", "additionalProperties": _INT,
            "description": "deliveries by status"},
)
_DELIVERY = _object(
    ("address", "status", "attempts"),
    address=_STR,
    role={"enum": ["to", "cc", "bcc"], "description": (
        "to: a member of the audience; cc/bcc: the session's single copy for an email"
        " cc/bcc address (a delivery like any other, counted in the session's counts)")},
    status={"enum": list(c.DELIVERY_STATUSES)}, attempts=_INT, outcome=_NULLABLE_STR,
    detail={}, durationS={"type": ["number", "null"]}, providerRef=_NULLABLE_STR,
    lastAttemptAt=_NULLABLE_TIME, nextAttemptAt=_NULLABLE_TIME, error=_NULLABLE_STR,
)
_ATTEMPT = _object(("attempt", "startedAt"), attempt={"type": "integer"}, startedAt=_TIME,
                   endedAt=_NULLABLE_TIME, outcome=_NULLABLE_STR, detail={},
                   providerRef=_NULLABLE_STR, error=_NULLABLE_STR)
_TRANSPORT = _object(
    ("id", "name", "type", "provider", "config", "default"),
    id=_UUID, name=_STR, type={"enum": list(c.TRANSPORT_TYPES)}, provider=_STR,
    config={"type": "object", "description": "the public part; secrets are write-only"},
    default={"type": "boolean"}, createdAt=_TIME, updatedAt=_TIME,
)
_SUPPRESSION = _object(("id", "address"), id=_UUID, address=_STR,
                       transport={"enum": [*c.TRANSPORT_TYPES, None]}, reason=_NULLABLE_STR,
                       createdAt=_TIME)
_APP = _object(("id", "appId", "name", "apiKey"), id=_UUID, appId=_UUID, name=_STR,
               apiKey={"type": "string", "description": "shown once"}, webhookSecret=_STR)
_REPORT = _object(("session", "recipients", "attempts", "rows"), session=_ref("Session"),
                  recipients=_INT, attempts=_INT, byStatus={"type": "object"},
                  byOutcome={"type": "object"}, attemptsPerRecipient={"type": "object"},
                  errorCodes={"type": "array", "description": (
                      "failed attempts by provider code: kind smtp|twilio|slack|sip|http|none,"
                      " code, attempts, example"), "items": {"type": "object"}},
                  latency=_object(("deliveries",), deliveries=_INT,
                                  p50S={"type": ["number", "null"]},
                                  p90S={"type": ["number", "null"]},
                                  p99S={"type": ["number", "null"]}),
                  rows={"type": "array", "items": {"type": "object"}},
                  rowsTruncated={"type": "boolean", "description": (
                      "more than 10,000 recipients: the CSV or /deliveries has them all")},
                  voice={"type": "object"})
_STATUS = _object(("status",), status=_STR)
_USAGE_ROW = _object(
    ("date", "transport", "sessions", "recipients", "attempts", "delivered", "failed",
     "smsSegments", "callsAnswered", "billableSeconds", "inboundCallbacks"),
    date={"type": "string", "format": "date"}, transport={"enum": list(c.TRANSPORT_TYPES)},
    sessions=_INT, recipients=_INT, attempts=_INT, delivered=_INT, failed=_INT,
    smsSegments=_INT, callsAnswered=_INT,
    billableSeconds={**_INT, "description": "talk time rounded up per call to the second"},
    inboundCallbacks={**_INT, "description": "calls back from recipients (voice rows)"})
_USAGE = _object(("from", "to", "items"), **{
    "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
    "items": {"type": "array", "items": _ref("UsageDay")}})

# Parameters by name: (location, schema); path parameters are required.
_PARAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "id": ("path", _UUID),
    "address": ("path", _STR),
    "limit": ("query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}),
    "cursor": ("query", {"type": "string", "description": "nextCursor of the previous page"}),
    "sessionStatus": ("query", {"enum": list(c.SESSION_STATUSES)}),
    "deliveryStatus": ("query", {"enum": list(c.DELIVERY_STATUSES)}),
    "transport": ("query", {"enum": list(c.TRANSPORT_TYPES)}),
    "xref": ("query", _STR),
    "createdFrom": ("query", _TIME),
    "createdTo": ("query", _TIME),
    "addressFilter": ("query", _STR),
    "format": ("query", {"enum": ["json", "csv"], "default": "json"}),
    "includeFailed": ("query", {"type": "boolean", "default": False}),
    "force": ("query", {"type": "boolean", "default": False}),
    "dateFrom": ("query", {"type": "string", "format": "date", "description":
                           "first UTC day (default: 29 days before `to`)"}),
    "dateTo": ("query", {"type": "string", "format": "date", "description":
                         "last UTC day, inclusive (default: today); at most 366 days in all"}),
}
_WIRE_NAME = {"sessionStatus": "status", "deliveryStatus": "status", "addressFilter": "address",
              "dateFrom": "from", "dateTo": "to"}


def _param(name: str) -> dict[str, Any]:
    where, schema = _PARAMS[name]
    return {"name": _WIRE_NAME.get(name, name), "in": where, "required": where == "path",
            "schema": schema}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(summary: str, body: str | None = None, ok: str = "200", params: tuple[str, ...] = (),
        auth: bool = True, answer: dict[str, Any] | None = None,
        content: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation. `answer` is the JSON schema of the success body; `content` gives other
    media types; a 204 has no body."""
    success: dict[str, Any] = {"description": "success"}
    if ok != "204":
        success["content"] = content or _json(answer or {"type": "object"})
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: success, "default": {"description": "error", "content": _json(
            _ref("Error"))}},
        "parameters": [_param(p) for p in params],
    }
    if body:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
    if not auth:
        op["security"] = []
    return op


def _list_of(model: str) -> dict[str, Any]:
    return _object(("items", "nextCursor"), items={"type": "array", "items": _ref(model)},
                   nextCursor=_NULLABLE_STR)


def _paths() -> dict[str, Any]:
    s = "/v1/sessions/{id}"
    session, page = _ref("Session"), ("limit", "cursor")
    return {
        "/v1/sessions": {
            "post": _op("Submit an instruction (header Idempotency-Key optional)",
                        "Instruction", "201", answer=session),
            "get": _op("List sessions, newest first", answer=_list_of("Session"), params=(
                "sessionStatus", "transport", "xref", "createdFrom", "createdTo", *page)),
        },
        s: {"get": _op("One session with counts by delivery status", params=("id",),
                       answer=session)},
        f"{s}/deliveries": {"get": _op("Per-recipient rows (email cc/bcc copies included)",
                                       params=("id", "deliveryStatus", "addressFilter", *page),
                                       answer=_list_of("Delivery"))},
        f"{s}/deliveries/{{address}}/attempts": {
            "get": _op("Every attempt of one recipient", params=("id", "address"),
                       answer=_list_of("Attempt"))},
        f"{s}/report": {"get": _op(
            "The session report: JSON, or CSV with ?format=csv", params=("id", "format"),
            content={**_json(_ref("Report")), "text/csv": {"schema": _STR}})},
        f"{s}/trigger": {"post": _op("Start a manual session", ok="202",
                                     params=("id", "includeFailed"), answer=session)},
        f"{s}/cancel": {"post": _op("Cancel a session", ok="202", params=("id",), answer=session)},
        f"{s}/pause": {"post": _op("Pause a session", ok="202", params=("id",), answer=session)},
        f"{s}/resume": {"post": _op("Resume a paused session", ok="202", params=("id",),
                                    answer=session)},
        "/v1/transports": {
            "post": _op("Register a transport", "TransportIn", "201", answer=_ref("Transport")),
            "get": _op("List transports", answer=_list_of("Transport"))},
        "/v1/transports/{id}": {
            "get": _op("One transport", params=("id",), answer=_ref("Transport")),
            "patch": _op("Change a transport", "TransportPatch", params=("id",),
                         answer=_ref("Transport")),
            "delete": _op("Delete an unused transport", ok="204", params=("id",)),
        },
        "/v1/usage": {"get": _op(
            "The app's usage per UTC day and transport type (zero rows left out); 422 for"
            " a bad date, from after to, or more than 366 days", params=("dateFrom", "dateTo"),
            answer=_USAGE)},
        "/v1/apps": {"post": _op("Create an app (admin key)", "AppIn", "201", answer=_ref("App"))},
        "/v1/suppressions": {
            "post": _op("Add addresses to the do-not-contact list", "SuppressionIn", "201",
                        answer=_list_of("Suppression")),
            "get": _op("List the do-not-contact list", params=("addressFilter", *page),
                       answer=_list_of("Suppression")),
        },
        "/v1/suppressions/{id}": {"delete": _op("Remove a suppression", ok="204", params=("id",))},
        "/v1/callbacks/twilio/{id}": {"post": _op(
            "Twilio status callback (X-Twilio-Signature checked)", ok="204", params=("id",),
            auth=False)},
        "/v1/callbacks/twilio/{id}/inbound": {"post": _op(
            "Twilio inbound message; STOP opts out", params=("id",), auth=False,
            content={"application/xml": {"schema": _STR}})},
        "/healthz": {"get": _op("Liveness", auth=False, answer=_STATUS)},
        "/readyz": {"get": _op("Readiness: PostgreSQL and Redis reachable", auth=False,
                               answer=_STATUS)},
        "/metrics": {"get": _op("Prometheus metrics (text exposition format)", auth=False,
                                content={"text/plain": {"schema": _STR}})},
    }


def build_spec() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _INPUTS], by_alias=True,
                                 ref_template=REF)
    schemas = {**defs.get("$defs", {}), "Error": _ERROR, "Session": _SESSION,
               "Delivery": _DELIVERY, "Attempt": _ATTEMPT, "Transport": _TRANSPORT,
               "Suppression": _SUPPRESSION, "App": _APP, "Report": _REPORT,
               "UsageDay": _USAGE_ROW}
    paths = _paths()
    _add_key_and_trunk_paths(paths, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Connect Hub API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


# --- API keys and voice trunk grants -------------------------------------------------------

_KEY = {"type": "object", "required": ["id", "prefix", "createdAt", "revokedAt"], "properties": {
    "id": _UUID, "prefix": {"type": "string"}, "createdAt": _TIME,
    "revokedAt": {"type": ["string", "null"], "format": "date-time"}}}
_NEW_KEY = {"type": "object", "required": ["id", "appId", "apiKey", "prefix", "createdAt"],
            "properties": {"id": _UUID, "appId": _UUID, "apiKey": {"type": "string"},
                           "prefix": {"type": "string"}, "createdAt": _TIME}}
_GRANT = {"type": "object", "required": ["appId", "trunk", "createdAt"], "properties": {
    "appId": _UUID, "trunk": {"type": "string"}, "createdAt": _TIME}}


def _path_param(op: dict[str, Any], name: str, schema: dict[str, Any]) -> dict[str, Any]:
    op["parameters"].append({"name": name, "in": "path", "required": True, "schema": schema})
    return op


def _add_key_and_trunk_paths(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    schemas.update({"ApiKey": _KEY, "NewApiKey": _NEW_KEY, "TrunkGrant": _GRANT})
    keys, trunks = "/v1/apps/{id}/keys", "/v1/apps/{id}/trunks"
    paths[keys] = {
        "post": _op("Create an API key (admin key, or the app's own key up to"
                    " HUB_MAX_KEYS_PER_APP active keys: 409 key-limit-reached); shown once",
                    ok="201", params=("id",), answer={"$ref": REF.format(model="NewApiKey")}),
        "get": _op("The app's API keys (never the secret)", params=("id",),
                   answer=_list_of("ApiKey")),
    }
    paths[f"{keys}/{{keyId}}"] = {"delete": _path_param(_op(
        "Revoke an API key: it gets 401 at once (admin key or the app's own key)", ok="204",
        params=("id",)), "keyId", _UUID)}
    paths[trunks] = {
        "post": _op("Grant a voice trunk (PJSIP endpoint) to an app (admin key)",
                    "TrunkGrantIn", "201", params=("id",),
                    answer={"$ref": REF.format(model="TrunkGrant")}),
        "get": _op("Voice trunks granted to the app", params=("id",),
                   answer=_list_of("TrunkGrant")),
    }
    paths[f"{trunks}/{{trunk}}"] = {"delete": _path_param(_op(
        "Revoke a trunk grant (admin key); 409 trunk-in-use while a voice transport of the"
        " app names it, unless force=true", ok="204", params=("id", "force")),
        "trunk", {"type": "string"})}
    paths["/metrics"]["get"]["description"] = (
        "Prometheus text. When HUB_METRICS_TOKEN is set, needs `Authorization: Bearer"
        " <token>` (401 otherwise).")
