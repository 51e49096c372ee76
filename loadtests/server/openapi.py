"""The reference server's OpenAPI 3.0 description (served at ``/openapi.json``): what clients and
fuzzers may rely on, statuses and bodies included."""

from __future__ import annotations

from functools import lru_cache

from loadtests.server import protocol as p
from loadtests.server.clock import MAX_ADVANCE_S


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    answer = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


_ERROR = {"$ref": "#/components/schemas/Error"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 8192}
_RETRY_AFTER = {"Retry-After": {"description": "whole seconds to wait before trying again",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_UNAVAILABLE = _json(_ERROR, "the auth tier is saturated (queue full or queue timeout)", _RETRY_AFTER)
_FORM_OR_JSON = ("application/x-www-form-urlencoded", "application/json")


def _body(schema: str, required: bool = True) -> dict:
    return {"required": required, "content": {
        kind: {"schema": {"$ref": f"#/components/schemas/{schema}"}} for kind in _FORM_OR_JSON}}


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    """The OpenAPI 3.0.3 document as a dict."""
    bearer = [{"bearer": []}]
    api = {
        "get": {
            "summary": "A protected endpoint (verifies the Bearer access token)",
            "security": bearer,
            "responses": {
                "200": _json({"type": "object"}, "the resource"),
                "401": _json(_ERROR, "no, invalid, revoked or expired access token",
                             {p.WWW_AUTHENTICATE_HEADER: {"schema": {"type": "string"}}}),
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "refreshlab reference token server", "version": "1"},
        "paths": {
            p.LOGIN_PATH: {"post": {
                "summary": "Log in: a new session's tokens",
                "requestBody": _body("Login"),
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Grant"}, "the session's tokens"),
                    "400": _json(_ERROR, "missing or unreadable fields"),
                    "401": _json(_ERROR, "bad credentials"),
                    "413": _json(_ERROR, "body too large"),
                    "503": _UNAVAILABLE,
                },
            }},
            p.TOKEN_PATH: {"post": {
                "summary": "The OAuth 2.0 refresh grant (RFC 6749 section 6)",
                "requestBody": _body("Refresh"),
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Grant"}, "new tokens"),
                    "400": _json(_ERROR, "invalid_request, invalid_grant or unsupported_grant_type"),
                    "413": _json(_ERROR, "body too large"),
                    "503": _UNAVAILABLE,
                },
            }},
            p.LOGOUT_PATH: {"post": {
                "summary": "Revoke the session of a token (RFC 7009 style)",
                "description": "The token comes in the body, or else as the Bearer access token.",
                "requestBody": _body("Logout", required=False),
                "responses": {
                    "200": _json({"type": "object", "required": ["revoked"],
                                  "properties": {"revoked": {"type": "boolean"}}}, "whether a session was revoked"),
                    "400": _json(_ERROR, "no token given, or an unreadable body"),
                    "413": _json(_ERROR, "body too large"),
                },
            }},
            p.PING_PATH: {"get": {"summary": "Liveness, no work", "responses": {
                "200": {"description": "pong", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            p.HEALTH_PATH: {"get": {"summary": "What this server serves", "responses": {
                "200": _json({"type": "object", "required": ["status", "strategy", "algorithm", "time_scale"]},
                             "settings")}}},
            p.LEDGER_PATH: {"get": {
                "summary": "Ledger totals and records (when enabled; loopback clients only)",
                "parameters": [{"name": "records", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {
                    "200": _json({"type": "object", "required": ["totals"]}, "the ledger"),
                    "403": _json({"type": "object"}, "not a loopback client"),
                    "404": _json({"type": "object"}, "the ledger endpoint is disabled"),
                },
            }},
            p.CLOCK_PATH: {"post": {
                "summary": "Tests only: move the test clock forward (with serve --test-clock; loopback clients only)",
                "requestBody": _body("ClockStep"),
                "responses": {
                    "200": _json({"type": "object", "required": ["scenario_time_s", "unix_time_s"], "properties": {
                        "scenario_time_s": {"type": "number"}, "unix_time_s": {"type": "number"}}},
                        "the clock's new time"),
                    "400": _json(_ERROR, "a missing, negative, non-finite or too large step, or an unreadable body"),
                    "403": _json({"type": "object"}, "not a loopback client"),
                    "404": _json({"type": "object"}, "the server runs on its real clock"),
                    "413": _json(_ERROR, "body too large"),
                },
            }},
            **{path: api for path in p.API_PATHS},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"}, "error_description": {"type": "string"}}},
                "Grant": {"type": "object", "required": ["access_token", "token_type", "expires_in"], "properties": {
                    "access_token": {"type": "string"}, "token_type": {"type": "string", "enum": ["Bearer"]},
                    "expires_in": {"type": "number", "minimum": 0}, "refresh_token": {"type": "string"}}},
                "Login": {"type": "object", "required": [p.USERNAME_FIELD, p.PASSWORD_FIELD], "properties": {
                    p.USERNAME_FIELD: _TEXT, p.PASSWORD_FIELD: {"type": "string"}}},
                "Refresh": {"type": "object", "required": [p.GRANT_TYPE_FIELD, p.REFRESH_TOKEN_FIELD], "properties": {
                    p.GRANT_TYPE_FIELD: {"type": "string", "enum": [p.REFRESH_GRANT]}, p.REFRESH_TOKEN_FIELD: _TEXT,
                    p.BASIS_FIELD: {"type": "string", "pattern": "^[0-9]{1,19}$"}}},
                "ClockStep": {"type": "object", "required": [p.ADVANCE_FIELD], "properties": {
                    p.ADVANCE_FIELD: {"type": "number", "minimum": 0, "maximum": MAX_ADVANCE_S}}},
                "Logout": {"type": "object", "properties": {
                    p.TOKEN_FIELD: _TEXT, p.REFRESH_TOKEN_FIELD: _TEXT}},
            },
        },
    }
