"""The reference token server: an ASGI app (Starlette) driving one variant's server policy.

Every decision — accept, 401, mint, rotate, re-issue, reject a reuse, revoke a family — comes from
the variant's :class:`~sim.strategies.server.ServerPolicy` and its :class:`~sim.strategies.ledger.Ledger`;
this module only carries them over HTTP, signs them as JWTs and keeps the clock.

Time: the ledger and the policy work in *scenario seconds* since start-up,
``now_s = (wall seconds since start-up) * time_scale``, so a 15-minute token at ``time_scale=60``
lasts 15 wall seconds. What goes on the wire is wall time (see :mod:`loadtests.server.protocol`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from loadtests.server import protocol as p
from loadtests.server.keys import SigningKeys, load_keys
from sim.scenario import AuthTier as AuthTierSettings
from sim.metrics import Level
from sim.scenario import Scenario
from sim.strategies.ledger import Ledger, LedgerObserver, Session, Token
from sim.strategies.server import Grant, Rejection

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ScenarioClock:
    """Scenario time of a running server.

    Receives the time scale (scenario seconds per wall second). :meth:`now_s` is scenario seconds
    since start-up, measured on the monotonic clock so a wall-clock step cannot move it;
    :attr:`t0_unix_s` is the wall (epoch) time of scenario time 0, for JWT claims.
    """

    def __init__(self, time_scale: float) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)
        self.t0_unix_s = time.time()
        self._t0_monotonic = time.monotonic()

    def now_s(self) -> float:
        """Scenario seconds since start-up."""
        return (time.monotonic() - self._t0_monotonic) * self.time_scale

    def unix_at(self, t_s: float) -> float:
        """The wall (epoch) time at scenario time ``t_s``."""
        return self.t0_unix_s + t_s / self.time_scale

    def wall(self, seconds: float) -> float:
        """A scenario duration as wall seconds."""
        return seconds / self.time_scale


class LedgerRecorder(LedgerObserver):
    """Keeps the ledger's mint, reuse and revoke happenings as rows of :data:`protocol.RECORD_COLUMNS`
    (``t_s`` in scenario seconds, ``outcome`` per the vocabulary of :mod:`sim.metrics`)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def on_mint(self, token: Token, *, cause: str, duplicate: bool, now: float) -> None:
        outcome = f"{token.kind}_{cause}" + ("_duplicate" if duplicate else "")
        self.rows.append((now, "mint", outcome, token.session, token.id, token.basis))

    def on_reuse(self, token: Token, *, outcome: str, now: float) -> None:
        self.rows.append((now, outcome, "", token.session, token.id, None))

    def on_revoke(self, session: Session, *, now: float) -> None:
        self.rows.append((now, "revoke", "", session.id, None, None))

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as JSON-ready dicts keyed by column."""
        return [dict(zip(p.RECORD_COLUMNS, row)) for row in self.rows]


class Unavailable(Exception):
    """A call waited longer than the auth tier's queue timeout for a worker (answered 503)."""


class AuthTier:
    """The auth tier's finite workers: a semaphore of ``settings.workers`` with a queue timeout.

    Receives the scenario's ``[auth]`` settings, the clock and whether to spend service time.
    Keeps, per one-second bin of scenario time, the worker-seconds spent busy and the call-seconds
    spent queued (scenario seconds, the ``auth_busy_s`` / ``auth_queue_s`` of :class:`sim.metrics.Tally`).
    """

    def __init__(self, settings: AuthTierSettings, clock: ScenarioClock, service_time: bool) -> None:
        self.settings = settings
        self.clock = clock
        self.service_time = service_time
        self.busy = Level()
        self.queued = Level()
        self.calls = 0
        self.unavailable = 0
        self._workers = asyncio.Semaphore(settings.workers)

    def worker(self) -> "_WorkerSlot":
        """An async context manager holding one worker for its body; entering it raises
        :class:`Unavailable` after the queue timeout."""
        return _WorkerSlot(self)

    async def _acquire(self) -> None:
        if self._workers.locked():
            self.queued.add(1, self.clock.now_s())
            try:
                async with asyncio.timeout(self.clock.wall(self.settings.queue_timeout_s)):
                    await self._workers.acquire()
            except TimeoutError:
                self.unavailable += 1
                raise Unavailable from None
            finally:
                self.queued.add(-1, self.clock.now_s())
        else:
            # a free worker is taken without waiting: no timer to arm on the common path
            await self._workers.acquire()
        self.busy.add(1, self.clock.now_s())
        self.calls += 1

    def _release(self) -> None:
        self._workers.release()
        self.busy.add(-1, self.clock.now_s())

    async def spend(self, service_s: float) -> None:
        """Hold the worker for ``service_s`` scenario seconds of work (nothing when service time is off)."""
        if self.service_time and service_s > 0:
            await asyncio.sleep(self.clock.wall(service_s))

    def stats(self) -> dict[str, Any]:
        """Workers, calls served, calls answered 503 and the per-second busy / queued lists."""
        now = self.clock.now_s()
        self.busy.add(0, now)
        self.queued.add(0, now)
        return {
            "workers": self.settings.workers,
            "calls": self.calls,
            "unavailable": self.unavailable,
            "busy_worker_s": self.busy.bins,
            "queued_s": self.queued.bins,
        }


class _WorkerSlot:
    __slots__ = ("tier",)

    def __init__(self, tier: AuthTier) -> None:
        self.tier = tier

    async def __aenter__(self) -> None:
        await self.tier._acquire()

    async def __aexit__(self, *exc_info) -> None:
        self.tier._release()


def wall_seconds(seconds: float) -> int | float:
    """A wall duration for the wire: an integer when whole to the millisecond, else 3 decimals."""
    rounded = round(max(seconds, 0.0), 3)
    return int(rounded) if rounded.is_integer() else rounded


class TokenServer:
    """One variant's issuer and API tier: its policy, ledger, clock, keys and auth tier.

    Receives the scenario, the variant's name (``KeyError`` listing the names if unknown), the
    time scale, an algorithm overriding ``scenario.tokens.algorithm``, whether to spend service
    time, and an optional private-key file (see :func:`~loadtests.server.keys.load_keys`).
    """

    def __init__(
        self,
        scenario: Scenario,
        strategy_name: str,
        *,
        time_scale: float = 1.0,
        algorithm: str | None = None,
        service_time: bool = True,
        private_key_path: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.variant = scenario.variant(strategy_name)
        self.policy = self.variant.server
        self.clock = ScenarioClock(time_scale)
        self.keys: SigningKeys = load_keys(algorithm or scenario.tokens.algorithm, private_key_path)
        self.recorder = LedgerRecorder()
        self.ledger = Ledger(self.recorder)
        self.tier = AuthTier(scenario.auth, self.clock, service_time)
        self.leeway_s = scenario.clocks.leeway_s
        self._user_ids: dict[str, int] = {}
        self._usernames: list[str] = []
        auth = scenario.auth
        self._refresh_service_s = (
            auth.refresh_time_s + auth.verify_time_s + auth.sign_time_s * self.policy.mints_per_refresh()
        )

    # --- tokens ------------------------------------------------------------------------------

    def encode(self, token: Token) -> str:
        """Sign ``token`` as a JWT: ``sub``, ``sid``, ``jti``, ``typ``, and ``iat`` / ``exp`` as
        whole epoch seconds (``exp`` rounded down, so at most one second early)."""
        claims = {
            "sub": self._usernames[self.ledger.sessions[token.session].user],
            "sid": str(token.session),
            "jti": str(token.id),
            "typ": token.kind,
            "iat": int(self.clock.unix_at(token.issued_at_s)),
            "exp": int(self.clock.unix_at(token.expires_at_s)),
        }
        return self.keys.encode(claims)

    def decode(self, raw: str, typ: str | None) -> Token | None:
        """The ledger token behind JWT ``raw`` if its signature and structure hold and its ``typ``
        is ``typ`` (any when None); None otherwise. Expiry is left to the policy."""
        try:
            claims = self.keys.decode(raw)
            token = self.ledger.tokens.get(int(claims["jti"]))
            if token is None or token.kind != claims["typ"] or str(token.session) != claims["sid"]:
                return None
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            return None
        if typ is not None and token.kind != typ:
            return None
        return token

    def expires_in(self, token: Token, now_s: float) -> int | float:
        """Wall seconds of validity ``token`` has left at scenario time ``now_s`` (its whole
        lifetime when minted at ``now_s``)."""
        return wall_seconds(self.clock.wall(token.expires_at_s - max(token.issued_at_s, now_s)))

    def grant_body(self, grant: Grant, now_s: float, presented: tuple[Token, str] | None = None) -> dict:
        """The RFC 6749 §5.1 body for ``grant``; a refresh token the client presented and gets back
        unchanged (no rotation) is returned as the same string."""
        body = {
            "access_token": self.encode(grant.access),
            "token_type": "Bearer",
            "expires_in": self.expires_in(grant.access, now_s),
        }
        if grant.refresh is not None:
            same = presented is not None and presented[0] is grant.refresh
            body["refresh_token"] = presented[1] if same else self.encode(grant.refresh)
        return body

    def user_id(self, username: str) -> int:
        """The ledger's user number for ``username`` (assigned on first login)."""
        if username not in self._user_ids:
            self._user_ids[username] = len(self._usernames)
            self._usernames.append(username)
        return self._user_ids[username]

    # --- endpoints ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """``POST /login`` (form or JSON ``username``, ``password``): a new session's tokens."""
        fields = await _fields(request)
        username, password = fields.get(p.USERNAME_FIELD), fields.get(p.PASSWORD_FIELD)
        if not username or password is None:
            return _oauth_error(400, "invalid_request", "username and password are required")
        if password != p.TEST_PASSWORD:
            return _oauth_error(401, "invalid_grant", "bad credentials")
        auth = self.scenario.auth
        try:
            async with self.tier.worker():
                await self.tier.spend(auth.login_time_s)
                now = self.clock.now_s()
                grant = self.policy.login(self.ledger, self.user_id(str(username)), now)
                await self.tier.spend(auth.sign_time_s * (1 if grant.refresh is None else 2))
        except Unavailable:
            return _unavailable()
        return JSONResponse(self.grant_body(grant, now), headers=_NO_STORE)

    async def token(self, request: Request) -> Response:
        """``POST /token``: the OAuth 2.0 refresh grant (RFC 6749 §6), plus the optional ``basis``
        field. Client authentication is accepted and ignored."""
        fields = await _fields(request)
        grant_type = fields.get(p.GRANT_TYPE_FIELD)
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type != p.REFRESH_GRANT:
            return _oauth_error(400, "unsupported_grant_type", f"only {p.REFRESH_GRANT} is supported")
        raw = fields.get(p.REFRESH_TOKEN_FIELD)
        if not raw:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        basis_text = fields.get(p.BASIS_FIELD)
        try:
            basis = int(basis_text) if basis_text not in (None, "") else None
        except (TypeError, ValueError):
            return _oauth_error(400, "invalid_request", "basis must be the jti of an access token")
        presented = self.decode(str(raw), p.REFRESH_TYP)
        if presented is None:
            return _oauth_error(400, "invalid_grant", p.INVALID)
        try:
            async with self.tier.worker():
                pending = self.policy.begin_refresh(self.ledger, presented, basis, self.clock.now_s())
                await self.tier.spend(self._refresh_service_s)
                now = self.clock.now_s()
                outcome = self.policy.finish_refresh(self.ledger, pending, now)
        except Unavailable:
            return _unavailable()
        if isinstance(outcome, Rejection):
            return _oauth_error(400, outcome.error, outcome.reason)
        return JSONResponse(self.grant_body(outcome, now, (presented, str(raw))), headers=_NO_STORE)

    async def api(self, request: Request) -> Response:
        """A protected endpoint: verifies the Bearer token through ``policy.authorize``; a sliding
        re-issue comes back in the ``X-Refreshed-Token`` header."""
        scheme, _, raw = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return JSONResponse({"error": "invalid_request", "error_description": "no bearer token"},
                                401, headers={p.WWW_AUTHENTICATE_HEADER: 'Bearer realm="refreshlab"'})
        token = self.decode(raw.strip(), p.ACCESS_TYP)
        if token is None:
            return _invalid_token(p.INVALID)
        now = self.clock.now_s()
        verdict = self.policy.authorize(self.ledger, token, now, leeway_s=self.leeway_s)
        if verdict.status != "ok":
            return _invalid_token(verdict.status)
        headers = {}
        if verdict.reissued is not None:
            headers[p.REFRESHED_TOKEN_HEADER] = self.encode(verdict.reissued)
            headers[p.REFRESHED_EXPIRES_IN_HEADER] = str(self.expires_in(verdict.reissued, now))
        return JSONResponse(self._api_body(request.url.path, token), headers=headers)

    def _api_body(self, path: str, token: Token) -> dict:
        if path == p.API_PROFILE_PATH:
            session = self.ledger.sessions[token.session]
            return {"sub": self._usernames[session.user], "sid": str(session.id)}
        if path == p.API_ORDERS_PATH:
            return {"orders": [{"id": n, "total_cents": 1000 + n} for n in range(3)]}
        return {"items": [{"id": n, "name": f"item-{n}"} for n in range(5)]}

    async def logout(self, request: Request) -> Response:
        """``POST /logout``: revokes the session of the presented token (field ``token`` or
        ``refresh_token``, else the Bearer access token). Like RFC 7009, an unknown token is
        answered 200 with ``"revoked": false``."""
        fields = await _fields(request)
        raw = fields.get(p.TOKEN_FIELD) or fields.get(p.REFRESH_TOKEN_FIELD)
        if not raw:
            scheme, _, raw = request.headers.get("authorization", "").partition(" ")
            raw = raw.strip() if scheme.lower() == "bearer" else ""
        if not raw:
            return _oauth_error(400, "invalid_request", "no token to revoke")
        token = self.decode(str(raw), None)
        if token is not None:
            self.ledger.revoke_session(self.ledger.session_of(token), self.clock.now_s())
        return JSONResponse({"revoked": token is not None})

    async def ping(self, request: Request) -> Response:
        """``GET /ping``: no auth, no work (a floor for benchmarks)."""
        return PlainTextResponse("pong")

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: the strategy, server kind, algorithm, time scale and ``t0_unix_s``."""
        return JSONResponse({
            "status": "ok",
            "strategy": self.variant.name,
            "server": self.policy.kind,
            "algorithm": self.keys.algorithm,
            "time_scale": self.clock.time_scale,
            "t0_unix_s": self.clock.t0_unix_s,
        })

    async def ledger_view(self, request: Request) -> Response:
        """``GET /ledger[?records=1]``: ledger totals, clock, auth-tier statistics and, on request,
        the mint / reuse / revoke records."""
        body = {
            "strategy": self.variant.name,
            "totals": self.ledger.totals(),
            "time_scale": self.clock.time_scale,
            "t0_unix_s": self.clock.t0_unix_s,
            "scenario_time_s": self.clock.now_s(),
            "auth": self.tier.stats(),
        }
        if request.query_params.get("records", "0") not in ("", "0", "false"):
            body["records"] = self.recorder.as_dicts()
        return JSONResponse(body)


async def _fields(request: Request) -> dict[str, Any]:
    """The request's JSON object or form fields (empty when neither parses)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}
    return dict(await request.form())


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status, headers=_NO_STORE)


def _invalid_token(description: str) -> JSONResponse:
    challenge = f'Bearer error="invalid_token", error_description="{description}"'
    return JSONResponse({"error": "invalid_token", "error_description": description}, 401,
                        headers={p.WWW_AUTHENTICATE_HEADER: challenge})


def _unavailable() -> JSONResponse:
    return _oauth_error(503, "temporarily_unavailable", "no auth worker within the queue timeout")


def create_app(scenario: Scenario, strategy_name: str, **options: Any) -> Starlette:
    """The reference server for variant ``strategy_name`` of ``scenario`` as a Starlette app.

    ``options`` are those of :class:`TokenServer` (whose instance is ``app.state.server``). Raises
    ``KeyError`` for an unknown strategy and ``ValueError`` for a bad algorithm, key or time scale.
    """
    server = TokenServer(scenario, strategy_name, **options)
    routes = [
        Route(p.LOGIN_PATH, server.login, methods=["POST"]),
        Route(p.TOKEN_PATH, server.token, methods=["POST"]),
        Route(p.LOGOUT_PATH, server.logout, methods=["POST"]),
        Route(p.PING_PATH, server.ping, methods=["GET"]),
        Route(p.HEALTH_PATH, server.healthz, methods=["GET"]),
        Route(p.LEDGER_PATH, server.ledger_view, methods=["GET"]),
        *(Route(path, server.api, methods=["GET"]) for path in p.API_PATHS),
    ]
    app = Starlette(routes=routes)
    app.state.server = server
    return app
