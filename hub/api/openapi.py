"""OpenAPI 3.1, generated from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from hub import __version__
from hub.api.apps import AppIn, TrunkGrantIn
from hub.api.suppressions import SuppressionIn
from hub.api.transports import TransportIn, TransportPatch
from hub.instruction import Instruction

REF = "#/components/schemas/{model}"
_INPUTS: list[type[BaseModel]] = [Instruction, TransportIn, TransportPatch, AppIn, SuppressionIn,
                                   TrunkGrantIn]

_ERROR = {
    "type": "object",
    "required": ["error_id", "message"],
    "properties": {"error_id": {"type": "string"}, "message": {"type": "string"},
                   "details": {}},
}
_LIST = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}},
                                          "nextCursor": {"type": ["string", "null"]}}}

_NULLABLE_STR = {"type": ["string", "null"]}
_DELIVERY = {
    "type": "object",
    "properties": {
        "address": {"type": "string"},
        "role": {"enum": ["to", "cc", "bcc"], "description": (
            "to: a member of the audience; cc/bcc: the session's single copy for an email"
            " cc/bcc address (a delivery like any other, counted in the session's counts)")},
        "status": {"type": "string"}, "attempts": {"type": "integer"},
        "outcome": _NULLABLE_STR, "detail": {}, "durationS": {"type": ["number", "null"]},
        "providerRef": _NULLABLE_STR, "lastAttemptAt": _NULLABLE_STR,
        "nextAttemptAt": _NULLABLE_STR, "error": _NULLABLE_STR,
    },
}


def _list_of(model: str) -> dict[str, Any]:
    return {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": REF.format(model=model)}},
        "nextCursor": _NULLABLE_STR}}


def _op(summary: str, body: str | None = None, ok: str = "200", params: tuple[str, ...] = (),
        auth: bool = True, answer: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: {"description": "success", "content": {"application/json": {
                               "schema": answer or {"type": "object"}}}},
                      "default": {"description": "error", "content": {
                          "application/json": {"schema": {"$ref": REF.format(model="Error")}}}}},
        "parameters": [{"name": p, "in": "path" if p in ("id", "address") else "query",
                        "required": p in ("id", "address"), "schema": {"type": "string"}}
                       for p in params],
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF.format(model=body)}}}}
    if not auth:
        op["security"] = []
    return op


def build_spec() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _INPUTS], by_alias=True,
                                 ref_template=REF)
    schemas = {**defs.get("$defs", {}), "Error": _ERROR, "List": _LIST, "Delivery": _DELIVERY}
    s = "/v1/sessions/{id}"
    paths: dict[str, Any] = {
        "/v1/sessions": {
            "post": _op("Submit an instruction (header Idempotency-Key optional)",
                        "Instruction", "201"),
            "get": _op("List sessions, newest first", params=(
                "status", "transport", "xref", "createdFrom", "createdTo", "limit", "cursor")),
        },
        s: {"get": _op("One session with counts by delivery status", params=("id",))},
        f"{s}/deliveries": {"get": _op("Per-recipient rows (email cc/bcc copies included)",
                                       params=("id", "status", "address", "limit", "cursor"),
                                       answer=_list_of("Delivery"))},
        f"{s}/deliveries/{{address}}/attempts": {
            "get": _op("Every attempt of one recipient", params=("id", "address"))},
        f"{s}/report": {"get": _op("The session report (JSON or CSV)", params=("id", "format"))},
        f"{s}/trigger": {"post": _op("Start a manual session", ok="202",
                                     params=("id", "includeFailed"))},
        f"{s}/cancel": {"post": _op("Cancel a session", ok="202", params=("id",))},
        f"{s}/pause": {"post": _op("Pause a session", ok="202", params=("id",))},
        f"{s}/resume": {"post": _op("Resume a paused session", ok="202", params=("id",))},
        "/v1/transports": {"post": _op("Register a transport", "TransportIn", "201"),
                           "get": _op("List transports")},
        "/v1/transports/{id}": {
            "get": _op("One transport", params=("id",)),
            "patch": _op("Change a transport", "TransportPatch", params=("id",)),
            "delete": _op("Delete an unused transport", ok="204", params=("id",)),
        },
        "/v1/apps": {"post": _op("Create an app (admin key)", "AppIn", "201")},
        "/v1/suppressions": {
            "post": _op("Add addresses to the do-not-contact list", "SuppressionIn", "201"),
            "get": _op("List the do-not-contact list", params=("address", "limit", "cursor")),
        },
        "/v1/suppressions/{id}": {"delete": _op("Remove a suppression", ok="204", params=("id",))},
        "/v1/callbacks/twilio/{id}": {"post": _op(
            "Twilio status callback (X-Twilio-Signature checked)", ok="204", params=("id",),
            auth=False)},
        "/v1/callbacks/twilio/{id}/inbound": {"post": _op(
            "Twilio inbound message; STOP opts out", params=("id",), auth=False)},
        "/healthz": {"get": _op("Liveness", auth=False)},
        "/readyz": {"get": _op("Readiness: PostgreSQL and Redis reachable", auth=False)},
        "/metrics": {"get": _op("Prometheus metrics", auth=False)},
    }
    _add_key_and_trunk_paths(paths, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Connect Hub API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


# --- API keys and voice trunk grants (issue 8 parts 1 and 6, issue 10 part 7) ------------

_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
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
