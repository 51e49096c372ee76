"""The reference token server's wire contract: paths, headers, fields and claims.

Both the server (:mod:`loadtests.server`) and the Locust side import these names, so a change
here changes both.

Times on the wire are wall-clock seconds: ``exp`` / ``iat`` claims are whole epoch seconds (JWT
NumericDate, so up to one second earlier than the server's own expiry); ``expires_in`` and
``X-Refreshed-Expires-In`` are the wall seconds from the answer to that expiry, a JSON integer when
whole and otherwise a number with millisecond precision. Scenario times (``t_s``,
``scenario_time_s`` in ``/ledger``) are wall seconds since start-up times the time scale.
"""

from __future__ import annotations

# --- paths -------------------------------------------------------------------------------------
LOGIN_PATH = "/login"
TOKEN_PATH = "/token"
LOGOUT_PATH = "/logout"
PING_PATH = "/ping"
HEALTH_PATH = "/healthz"
LEDGER_PATH = "/ledger"
#: the OpenAPI 3 description of the server
OPENAPI_PATH = "/openapi.json"
#: tests only: moves a test clock forward (``serve --test-clock``; 404 otherwise, loopback only)
CLOCK_PATH = "/test/clock"
API_ITEMS_PATH = "/api/items"
API_PROFILE_PATH = "/api/profile"
API_ORDERS_PATH = "/api/orders"
#: protected endpoints, each verifying the Bearer access token through the server policy
API_PATHS = (API_ITEMS_PATH, API_PROFILE_PATH, API_ORDERS_PATH)

# --- headers -----------------------------------------------------------------------------------
#: a token a sliding-expiration server re-issued with a successful API answer
REFRESHED_TOKEN_HEADER = "X-Refreshed-Token"
#: the re-issued token's lifetime in wall seconds
REFRESHED_EXPIRES_IN_HEADER = "X-Refreshed-Expires-In"
WWW_AUTHENTICATE_HEADER = "WWW-Authenticate"

# --- form / JSON fields ------------------------------------------------------------------------
USERNAME_FIELD = "username"
PASSWORD_FIELD = "password"
GRANT_TYPE_FIELD = "grant_type"
REFRESH_TOKEN_FIELD = "refresh_token"
#: RFC 7009 style field of ``POST /logout`` (``refresh_token`` or a Bearer header also work)
TOKEN_FIELD = "token"
#: refreshlab extension of the refresh grant: the ``jti`` of the access token the client held
#: when it decided to renew (recorded as the mint's basis, METRICS.md)
BASIS_FIELD = "basis"
REFRESH_GRANT = "refresh_token"
#: field of ``POST /test/clock``: scenario seconds to move the test clock forward
ADVANCE_FIELD = "advance_s"

#: the test user store: any username, this password
TEST_PASSWORD = "refreshlab"

# --- claims ------------------------------------------------------------------------------------
#: ``aud`` of every token (the protected API)
AUDIENCE = "refreshlab-api"
#: ``iss`` of every token: this prefix and the server instance's id (tokens of one instance are
#: refused by every other, even one that shares the signing key)
ISSUER_PREFIX = "refreshlab:"
#: ``typ`` claim values
ACCESS_TYP = "access"
REFRESH_TYP = "refresh"

# --- error vocabulary --------------------------------------------------------------------------
#: ``error_description`` of a 401 from the API (``WWW-Authenticate: Bearer error="invalid_token"``)
EXPIRED = "expired"
INVALID = "invalid"
#: ``/ledger`` record columns
RECORD_COLUMNS = ("t_s", "event", "outcome", "session", "token", "basis")
