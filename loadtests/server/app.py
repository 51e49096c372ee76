"""The reference token server: an ASGI app (Starlette) driving one variant's server policy.

Every decision — accept, 401, mint, rotate, re-issue, reject a reuse, revoke a family, log out —
comes from the variant's :class:`~sim.strategies.server.ServerPolicy` and its
:class:`~sim.strategies.ledger.Ledger`; this module only carries them over HTTP, signs and verifies
them as JWTs and keeps the clock. The ledger lives in a store (:mod:`loadtests.server.store`): this
process's memory, or Redis so that several workers share it.

Time: the ledger and the policy work in *scenario seconds* since start-up,
``now_s = (wall seconds since start-up) * time_scale``, so a 15-minute token at ``time_scale=60``
lasts 15 wall seconds. What goes on the wire is wall time (see :mod:`loadtests.server.protocol`).
One clock object (:mod:`loadtests.server.clock`) is the server's only source of *now*: stamping,
verification, the ledger and the auth tier all read it, so tests can inject a manual one.

Tokens (RFC 8725): one algorithm per server, an allowlist of one; every token carries ``iss``
(this server instance), ``aud``, ``sub``, ``exp``, ``iat``, ``nbf``, ``jti``, and verification
requires all of them before the ledger is asked; the ledger token must then match the ``jti``, the
``typ``, the session and the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import urllib.parse
from collections import Counter, defaultdict, deque
from typing import Any

import jwt
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from loadtests.server import protocol as p
from loadtests.server.clock import ManualClock, ScenarioClock, check_time_scale
from loadtests.server.keys import SigningKeys, generate_key, load_keys
from loadtests.server.store import open_store
from sim.engine.streams import Source, generator
from sim.metrics import Level
from sim.scenario import AuthTier as AuthTierSettings
from sim.scenario import Scenario
from sim.strategies.ledger import Token
from sim.strategies.server import Grant, PendingRefresh, Rejection
from sim.strategies.service import ServiceTimes

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: the largest request body read (bytes); a bigger one is answered 413
MAX_BODY_BYTES = 64 * 1024
#: the longest user name, token or field value accepted
MAX_FIELD_CHARS = 8 * 1024
#: environment variable carrying the server's settings to uvicorn worker processes
SETTINGS_ENV = "REFRESHLAB_SERVER_SETTINGS"
#: scenario seconds a token and a session are kept after they expire (beyond the leeway and the
#: grace period), so that a late presentation still meets its ledger entry and is answered "expired"
RETAIN_MARGIN_S = 60.0


class Unavailable(Exception):
    """No auth worker for a call: the queue was full (shed at once) or the call waited longer than
    the queue timeout. Answered 503 with ``Retry-After``."""


class AuthTier:
    """The auth tier's finite workers: ``settings.workers`` of them, a bounded first-come
    first-served queue (``settings.queue_limit`` calls may wait; one more is shed at once; a freed
    worker passes straight to the first in the queue, as in the simulator) and a queue timeout.

    Receives the scenario's ``[auth]`` settings, the clock, whether to spend service time and the
    store. Keeps, per one-second bin of scenario time, the worker-seconds spent busy and the
    call-seconds spent queued (scenario seconds, the ``auth_busy_s`` / ``auth_queue_s`` of
    :class:`sim.metrics.Tally`), each call's wait for a worker, and counts of calls served and
    answered 503. Every uvicorn worker process has a tier of its own (``settings.workers``
    workers, ``settings.queue_limit`` places); with a shared store (Redis) each process adds
    what changed to the store after every call (:meth:`flush`), so that :meth:`stats` answers
    for the whole server whichever process is asked.
    """

    def __init__(self, settings: AuthTierSettings, clock: ScenarioClock, service_time: bool, store=None,
                 keep_waits: bool = False) -> None:
        self.settings = settings
        self.clock = clock
        self.service_time = service_time
        self.store = store if store is not None and getattr(store, "shared", False) else None
        self.busy = Level()
        self.queued = Level()
        self.calls = 0
        self.unavailable = 0
        self.shed = 0
        #: calls waiting for a worker, first come first served; a freed worker is handed to the
        #: first at once (so a call being handed a worker no longer counts against the bound)
        self._queue: deque[asyncio.Future] = deque()
        self._free = settings.workers
        #: (scenario time asked, wait in scenario ms) of every call that was not shed at once; kept
        #: only with ``keep_waits`` (a server that serves its records: they grow with the run)
        self.waits: list[tuple[float, float]] = []
        self.keep_waits = keep_waits
        self._pending = _TierDelta()

    def serving(self) -> None:
        """This process starts serving (uvicorn's start-up): with a shared store, count its tier
        among the server's."""
        if self.store is not None:
            self.store.join_auth_tier()

    def worker(self) -> "_WorkerSlot":
        """An async context manager holding one worker for its body; entering it raises
        :class:`Unavailable` when the queue is full or after the queue timeout."""
        return _WorkerSlot(self)

    def retry_after(self) -> str:
        """The ``Retry-After`` value of a 503: the scenario's ``retry_after`` in whole wall
        seconds (RFC 9110 §10.2.3), at least 1."""
        return str(max(1, math.ceil(self.clock.wall(self.settings.retry_after_s))))

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)
        self._pending.counts[name] += 1

    def _level(self, level: Level, which: dict, delta: int, now: float) -> None:
        """``level.add(delta, now)``, keeping what it added to each bin for :meth:`flush`."""
        first = int(level._t)
        before = level.bins[first:]
        level.add(delta, now)
        for k, value in enumerate(level.bins[first:]):
            added = value - (before[k] if k < len(before) else 0.0)
            if added:
                which[first + k] += added

    def _waited(self, asked_s: float, served_s: float) -> None:
        if not self.keep_waits:
            return
        wait = (round(asked_s, 6), round((served_s - asked_s) * 1000.0, 3))
        self.waits.append(wait)
        self._pending.waits.append(wait)

    async def _acquire(self) -> None:
        asked = self.clock.now_s()
        if self._free:
            # a free worker is taken without waiting: no timer to arm on the common path
            self._free -= 1
        else:
            limit = self.settings.queue_limit
            if limit is not None and len(self._queue) >= limit:
                self._count("unavailable")
                self._count("shed")
                raise Unavailable
            granted = asyncio.get_running_loop().create_future()
            self._queue.append(granted)
            self._level(self.queued, self._pending.queued, 1, asked)
            try:
                async with asyncio.timeout(self.clock.wall(self.settings.queue_timeout_s)):
                    await asyncio.shield(granted)
            except TimeoutError:
                if not granted.done():  # still in the queue: give up
                    self._queue.remove(granted)
                    self._level(self.queued, self._pending.queued, -1, self.clock.now_s())
                    self._waited(asked, self.clock.now_s())
                    self._count("unavailable")
                    raise Unavailable from None
                # handed a worker as the timeout fired: the call goes on
            except BaseException:
                if granted.done():
                    self._release()  # cancelled after a worker was handed over: hand it on
                else:
                    self._queue.remove(granted)
                    self._level(self.queued, self._pending.queued, -1, self.clock.now_s())
                raise
            self._waited(asked, granted.result())
            return
        self._waited(asked, asked)
        self._level(self.busy, self._pending.busy, 1, asked)
        self._count("calls")

    def _release(self) -> None:
        """The worker is free: hand it to the first call in the queue at once (it leaves the queue
        and starts its service now, as in the simulator), else put it back."""
        now = self.clock.now_s()
        if self._queue:
            granted = self._queue.popleft()
            self._level(self.queued, self._pending.queued, -1, now)
            granted.set_result(now)  # busy stays as it is: the worker passes from one call to the next
            self._count("calls")
        else:
            self._free += 1
            self._level(self.busy, self._pending.busy, -1, now)

    async def spend(self, service_s: float) -> None:
        """Hold the worker for ``service_s`` scenario seconds of work (nothing when service time is off)."""
        if self.service_time and service_s > 0:
            await asyncio.sleep(self.clock.wall(service_s))

    async def flush(self) -> None:
        """With a shared store: add what this process's tier did since the last flush to the
        store's totals (increments, so processes never overwrite each other). Awaited before a
        call's answer goes out, so that what a client has seen is in the shared statistics."""
        if self.store is None or self._pending.empty():
            return
        delta, self._pending = self._pending, _TierDelta()
        await self.store.add_auth_stats(delta.counts, delta.busy, delta.queued, delta.waits)

    async def stats(self, waits: bool = False) -> dict[str, Any]:
        """The tier's statistics for the whole server: ``scope`` (``"server"``), ``processes``
        (uvicorn worker processes, each with its own tier), ``workers`` and ``queue_limit`` (all
        processes together), ``workers_per_process``, calls served, calls answered 503 (of
        which shed at once), the per-second busy / queued lists and, with ``waits``, every
        call's [scenario time asked, wait in scenario ms] (``queue_waits``)."""
        now = self.clock.now_s()
        self._level(self.busy, self._pending.busy, 0, now)
        self._level(self.queued, self._pending.queued, 0, now)
        if self.store is not None:
            await self.flush()
            shared = await self.store.auth_stats(waits)
            processes = max(shared["processes"], 1)
            counts, busy, queued, all_waits = shared["counts"], shared["busy"], shared["queued"], shared["waits"]
        else:
            processes = 1
            counts = {"calls": self.calls, "unavailable": self.unavailable, "shed": self.shed}
            busy, queued, all_waits = self.busy.bins, self.queued.bins, self.waits
        limit = self.settings.queue_limit
        body = {
            "scope": "server",
            "processes": processes,
            "workers": self.settings.workers * processes,
            "workers_per_process": self.settings.workers,
            "queue_limit": None if limit is None else limit * processes,
            "calls": counts.get("calls", 0),
            "unavailable": counts.get("unavailable", 0),
            "shed": counts.get("shed", 0),
            "busy_worker_s": list(busy),
            "queued_s": list(queued),
        }
        if waits:
            body["queue_waits"] = [list(w) for w in all_waits]
        return body


class _TierDelta:
    """What an :class:`AuthTier` did since its last flush: counts, busy / queued seconds per
    bin, and call waits."""

    __slots__ = ("counts", "busy", "queued", "waits")

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.busy: dict[int, float] = defaultdict(float)
        self.queued: dict[int, float] = defaultdict(float)
        self.waits: list[tuple[float, float]] = []

    def empty(self) -> bool:
        return not (self.counts or self.busy or self.queued or self.waits)


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


class _BadRequest(Exception):
    """A request body or field that cannot be read; answered 400 (413 when too large)."""

    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.status = status


class TokenServer:
    """One variant's issuer and API tier: its policy, store, clock, keys and auth tier.

    Receives the scenario, the variant's name (``KeyError`` listing the names if unknown), the
    time scale, an algorithm overriding ``scenario.tokens.algorithm``, whether to spend service
    time, an optional private-key file (see :func:`~loadtests.server.keys.load_keys`), the store
    (None / ``memory``, or a ``redis://`` URL) and its key namespace (shared by the workers of one
    server; fresh when None), whether to prune expired ledger entries, and whether to serve
    ``/ledger`` (to loopback clients only) with its record rows.

    ``clock``: the server's source of *now* (a :class:`~loadtests.server.clock.ScenarioClock` at
    ``time_scale`` when None; an injected clock brings its own time scale, and ``time_scale``
    must then be left out or agree). ``clock_endpoint``: serve ``POST /test/clock`` (loopback
    clients only) to move a :class:`~loadtests.server.clock.ManualClock`; for tests that talk
    HTTP to a server process, never for a measurement.
    """

    def __init__(
        self,
        scenario: Scenario,
        strategy_name: str,
        *,
        time_scale: float | None = None,
        algorithm: str | None = None,
        service_time: bool = True,
        private_key_path: str | None = None,
        store: str | None = None,
        namespace: str | None = None,
        prune: bool = True,
        ledger_endpoint: bool = False,
        clock: ScenarioClock | None = None,
        clock_endpoint: bool = False,
    ) -> None:
        self.scenario = scenario
        self.variant = scenario.variant(strategy_name)
        self.policy = self.variant.server
        algorithm = algorithm or scenario.tokens.algorithm
        load_keys(algorithm, private_key_path)  # the key's checks, before anything is shared
        grace_s = float(getattr(self.policy, "grace_period_s", 0.0))
        retain_s = scenario.clocks.leeway_s + grace_s + RETAIN_MARGIN_S if prune else None
        if clock is not None and time_scale is not None and time_scale != clock.time_scale:
            raise ValueError(f"time_scale {time_scale!r} disagrees with the clock's {clock.time_scale!r}")
        if clock_endpoint and not isinstance(clock, ManualClock):
            raise ValueError("the clock endpoint needs a ManualClock (refreshlab serve --test-clock)")
        scale = check_time_scale(1.0 if time_scale is None else time_scale) if clock is None else clock.time_scale
        # Redis expires keys on its own wall clock: after the wall time this clock needs to pass
        self.store = open_store(store, retain_s=retain_s, records=ledger_endpoint, namespace=namespace,
                                wall=lambda s: self.clock.wall_until(s))
        if clock is None:
            t0 = float(self.store.shared_value("t0_unix_s", lambda: repr(time.time()).encode()))
            clock = ScenarioClock(scale, t0 if self.store.shared else None)
        self.clock = clock
        self.clock_endpoint = clock_endpoint
        self.store.now = self.clock.now_s
        key_bytes = None if private_key_path else self.store.shared_value(
            f"key:{algorithm}", lambda: generate_key(algorithm))
        self.keys: SigningKeys = load_keys(algorithm, private_key_path, key_bytes=key_bytes)
        self.issuer = f"{p.ISSUER_PREFIX}{self.store.instance}"
        self.ledger_endpoint = ledger_endpoint
        self.tier = AuthTier(scenario.auth, self.clock, service_time, self.store, keep_waits=ledger_endpoint)
        self.leeway_s = scenario.clocks.leeway_s
        # PyJWT's exp/nbf check: the scenario's leeway, plus the second lost to whole-second exp
        self._jwt_leeway_wall_s = self.clock.wall(self.leeway_s) + 1.0
        self._atomic = bool(getattr(self.policy, "atomic", True))
        # the policy's own draws (a race window per later presentation): the server owns the stream
        self._rng = generator(scenario.run.seed, 0, 3, int(Source.RACE))
        self.service = ServiceTimes(scenario.auth, self.policy)
        # service-time draws of this server process (the rule and the distributions are the
        # simulator's; the randomness is the server's own)
        self._service_rng = np.random.default_rng()

    def _draw_service(self, part: str) -> float:
        """One draw of the ``[auth]`` service-time ``part`` (seconds, at least 0)."""
        return max(float(self.service.dists[part].sample(self._service_rng, 1)[0]), 0.0)

    # --- tokens ------------------------------------------------------------------------------

    def encode(self, token: Token, subject: str) -> str:
        """Sign ``token`` of user ``subject`` as a JWT: ``iss``, ``aud``, ``sub``, ``sid``, ``jti``,
        ``typ``, and ``iat`` / ``nbf`` / ``exp`` as whole epoch seconds (``exp`` rounded down, so
        at most one second early)."""
        issued = int(self.clock.unix_at(token.issued_at_s))
        claims = {
            "iss": self.issuer,
            "aud": p.AUDIENCE,
            "sub": subject,
            "sid": str(token.session),
            "jti": str(token.id),
            "typ": token.kind,
            "iat": issued,
            "nbf": issued,
            "exp": int(self.clock.unix_at(token.expires_at_s)),
        }
        return self.keys.encode(claims)

    def verify(self, raw: str) -> dict | None:
        """The claims of JWT ``raw`` if its signature, algorithm, issuer, audience and required
        claims hold; None otherwise. A genuine token past its ``exp`` (on this server's clock)
        comes back with ``"expired": True`` (the ledger and the policy then say what that means)."""
        if not isinstance(raw, str) or not raw or len(raw) > MAX_FIELD_CHARS:
            return None
        try:
            claims, expired = self.keys.decode_allowing_expired(
                raw, issuer=self.issuer, audience=p.AUDIENCE, now_unix_s=self.clock.unix_now(),
                leeway_s=self._jwt_leeway_wall_s)
        except (jwt.InvalidTokenError, ValueError, TypeError, RecursionError, OverflowError):
            return None
        claims["expired"] = expired  # over any claim of that name the token itself carries
        if not all(isinstance(claims.get(name), str) for name in ("sub", "sid", "jti", "typ")):
            return None
        if not (claims["jti"].isdecimal() and claims["sid"].isdecimal() and len(claims["jti"]) < 20):
            return None
        return claims

    def lookup(self, txn, claims: dict | None, typ: str | None) -> Token | None:
        """Inside a unit of work: the ledger token behind verified ``claims`` when ``typ`` (any
        when None), session and subject match; None otherwise."""
        if claims is None or (typ is not None and claims["typ"] != typ):
            return None
        token = txn.ledger.tokens.get(int(claims["jti"]))
        if token is None or token.kind != claims["typ"] or str(token.session) != claims["sid"]:
            return None
        session = txn.ledger.sessions.get(token.session)
        if session is None:
            return None
        try:
            if txn.username(session.user) != claims["sub"]:
                return None
        except (KeyError, IndexError):
            return None
        return token

    def expires_in(self, token: Token, now_s: float) -> int | float:
        """Wall seconds of validity ``token`` has left at scenario time ``now_s`` (its whole
        lifetime when minted at ``now_s``)."""
        return wall_seconds(self.clock.wall(token.expires_at_s - max(token.issued_at_s, now_s)))

    def grant_body(self, grant: Grant, subject: str, now_s: float,
                   presented: tuple[Token, str] | None = None) -> dict:
        """The RFC 6749 §5.1 body for ``grant``; a refresh token the client presented and gets back
        unchanged (no rotation) is returned as the same string."""
        body = {
            "access_token": self.encode(grant.access, subject),
            "token_type": "Bearer",
            "expires_in": self.expires_in(grant.access, now_s),
        }
        if grant.refresh is not None:
            same = presented is not None and presented[0].id == grant.refresh.id
            body["refresh_token"] = presented[1] if same else self.encode(grant.refresh, subject)
        return body

    # --- endpoints ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """``POST /login`` (form or JSON ``username``, ``password``): a new session's tokens."""
        try:
            fields = await _fields(request)
        except _BadRequest as exc:
            return _oauth_error(exc.status, "invalid_request", str(exc))
        username, password = _text(fields, p.USERNAME_FIELD), _text(fields, p.PASSWORD_FIELD)
        if not username or password is None:
            return _oauth_error(400, "invalid_request", "username and password are required")
        if password != p.TEST_PASSWORD:
            return _oauth_error(401, "invalid_grant", "bad credentials")
        service, draw = self.service, self._draw_service
        try:
            async with self.tier.worker():
                await self.tier.spend(service.part_s("login_time", draw))
                now = self.clock.now_s()
                grant = await self.store.run(lambda txn: self.policy.login(txn.ledger, txn.user_id(username), now))
                await self.tier.spend(service.signs_s(1 if grant.refresh is None else 2, draw))
        except Unavailable:
            return self._unavailable()
        finally:
            await self.tier.flush()
        return JSONResponse(self.grant_body(grant, username, now), headers=_NO_STORE)

    async def token(self, request: Request) -> Response:
        """``POST /token``: the OAuth 2.0 refresh grant (RFC 6749 §6), plus the optional ``basis``
        field. Client authentication is accepted and ignored."""
        try:
            fields = await _fields(request)
        except _BadRequest as exc:
            return _oauth_error(exc.status, "invalid_request", str(exc))
        grant_type = _text(fields, p.GRANT_TYPE_FIELD)
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type != p.REFRESH_GRANT:
            return _oauth_error(400, "unsupported_grant_type", f"only {p.REFRESH_GRANT} is supported")
        raw = _text(fields, p.REFRESH_TOKEN_FIELD)
        if not raw:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        try:
            basis = _basis(fields.get(p.BASIS_FIELD))
        except _BadRequest as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        claims = self.verify(raw)
        if claims is None or claims["typ"] != p.REFRESH_TYP:
            return _oauth_error(400, "invalid_grant", p.INVALID)

        def begin(txn):
            token = self.lookup(txn, claims, p.REFRESH_TYP)
            if token is None:
                return None
            pending = self.policy.begin_refresh(txn.ledger, token, basis, self.clock.now_s(), self._rng)
            # past the JWT's own exp: refused whatever the ledger says (the call still counts)
            return "expired" if claims.get("expired") else pending

        def finish(txn):
            ledger = txn.ledger
            fresh = ledger.tokens.get(pending.token.id)
            if fresh is None:
                return Rejection("expired"), None
            outcome = self.policy.finish_refresh(ledger, PendingRefresh(fresh, pending.basis, pending.decision), now)
            return outcome, txn.username(ledger.sessions[fresh.session].user)

        try:
            async with self.tier.worker():
                pending = await self.store.run(begin)
                if pending is None and not claims.get("expired"):
                    return _oauth_error(400, "invalid_grant", p.INVALID)
                if pending is None or pending == "expired":
                    return _oauth_error(400, "invalid_grant", "expired")
                await self.tier.spend(self.service.refresh_s(self._draw_service))
                now = self.clock.now_s()
                outcome, subject = await self.store.run(finish, atomic=self._atomic)
        except Unavailable:
            return self._unavailable()
        finally:
            await self.tier.flush()
        if isinstance(outcome, Rejection):
            return _oauth_error(400, outcome.error, outcome.reason)
        return JSONResponse(self.grant_body(outcome, subject, now, (pending.token, raw)), headers=_NO_STORE)

    async def api(self, request: Request) -> Response:
        """A protected endpoint: verifies the Bearer token, then ``policy.authorize``; a sliding
        re-issue comes back in the ``X-Refreshed-Token`` header."""
        scheme, _, raw = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return JSONResponse({"error": "invalid_request", "error_description": "no bearer token"},
                                401, headers={p.WWW_AUTHENTICATE_HEADER: 'Bearer realm="refreshlab"'})
        claims = self.verify(raw.strip())
        if claims is None or claims["typ"] != p.ACCESS_TYP:
            return _invalid_token(p.INVALID)
        if claims.get("expired"):  # past the JWT's own exp (and leeway): whatever the ledger says
            return _invalid_token(p.EXPIRED)
        now = self.clock.now_s()

        def authorize(txn):
            token = self.lookup(txn, claims, p.ACCESS_TYP)
            if token is None:
                return None, None, None
            verdict = self.policy.authorize(txn.ledger, token, now, leeway_s=self.leeway_s)
            return token, verdict, txn.username(txn.ledger.sessions[token.session].user)

        token, verdict, subject = await self.store.run(authorize)
        if token is None:
            return _invalid_token(p.EXPIRED if claims.get("expired") else p.INVALID)
        if verdict.status != "ok":
            return _invalid_token(verdict.status)
        headers = {}
        if verdict.reissued is not None:
            headers[p.REFRESHED_TOKEN_HEADER] = self.encode(verdict.reissued, subject)
            headers[p.REFRESHED_EXPIRES_IN_HEADER] = str(self.expires_in(verdict.reissued, now))
        return JSONResponse(self._api_body(request.url.path, token, subject), headers=headers)

    def _api_body(self, path: str, token: Token, subject: str) -> dict:
        if path == p.API_PROFILE_PATH:
            return {"sub": subject, "sid": str(token.session)}
        if path == p.API_ORDERS_PATH:
            return {"orders": [{"id": n, "total_cents": 1000 + n} for n in range(3)]}
        return {"items": [{"id": n, "name": f"item-{n}"} for n in range(5)]}

    async def logout(self, request: Request) -> Response:
        """``POST /logout``: revokes the session of the presented token (field ``token`` or
        ``refresh_token``, else the Bearer access token) — its refresh and access tokens alike.
        Like RFC 7009, an unknown token is answered 200 with ``"revoked": false``."""
        try:
            fields = await _fields(request)
        except _BadRequest as exc:
            return _oauth_error(exc.status, "invalid_request", str(exc))
        given = [fields[name] for name in (p.TOKEN_FIELD, p.REFRESH_TOKEN_FIELD) if name in fields]
        if any(not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS for value in given):
            return _oauth_error(400, "invalid_request",
                                f"a token must be a string of 1 to {MAX_FIELD_CHARS} characters")
        raw = next((value for value in given if value), None)
        if not raw:
            scheme, _, raw = request.headers.get("authorization", "").partition(" ")
            raw = raw.strip() if scheme.lower() == "bearer" else ""
        if not raw:
            return _oauth_error(400, "invalid_request", "no token to revoke")
        claims = self.verify(raw)
        if claims is not None and claims.get("expired"):
            claims = None  # an expired token revokes nothing
        now = self.clock.now_s()

        def revoke(txn):
            token = self.lookup(txn, claims, None)
            if token is not None:
                self.policy.logout(txn.ledger, token, now)
            return token is not None

        return JSONResponse({"revoked": await self.store.run(revoke)})

    async def ping(self, request: Request) -> Response:
        """``GET /ping``: no auth, no work (a floor for benchmarks)."""
        return PlainTextResponse("pong")

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: the strategy, server kind, algorithm, time scale, ``t0_unix_s``, the
        clock (``real``, or ``manual`` for a test clock) and the issuer."""
        return JSONResponse({
            "status": "ok",
            "strategy": self.variant.name,
            "server": self.policy.kind,
            "algorithm": self.keys.algorithm,
            "time_scale": self.clock.time_scale,
            "t0_unix_s": self.clock.t0_unix_s,
            "clock": self.clock.kind,
            "issuer": self.issuer,
            "pid": os.getpid(),
        })

    async def ledger_view(self, request: Request) -> Response:
        """``GET /ledger[?records=1]``: ledger totals, sizes, clock, auth-tier statistics and, on
        request, the mint / reuse / revoke records. Only when the server was started with it
        (404 otherwise), and only to loopback clients (403 otherwise)."""
        if not self.ledger_endpoint:
            return JSONResponse({"error": "not_found"}, 404)
        if not _from_loopback(request):
            return _loopback_only()
        body = {
            "strategy": self.variant.name,
            "totals": self.store.totals(),
            "sizes": self.store.sizes(),
            "time_scale": self.clock.time_scale,
            "t0_unix_s": self.clock.t0_unix_s,
            "scenario_time_s": self.clock.now_s(),
        }
        records = request.query_params.get("records", "0") not in ("", "0", "false")
        body["auth"] = await self.tier.stats(waits=records)
        if records:
            body["records"] = [dict(zip(p.RECORD_COLUMNS, row)) for row in self.store.records()]
        return JSONResponse(body)

    async def advance_clock(self, request: Request) -> Response:
        """``POST /test/clock`` (form or JSON ``advance_s``: scenario seconds, 0 or more): moves
        the server's test clock forward and answers ``{"scenario_time_s", "unix_time_s"}`` (the
        new scenario time and the epoch time JWT claims are now checked against). Tests only:
        answered only by a server started with a test clock (404 otherwise), and only to
        loopback clients (403 otherwise); ``400 invalid_request`` for a step that is missing,
        not a number, negative (the clock never goes back) or not finite."""
        if not self.clock_endpoint:
            return JSONResponse({"error": "not_found"}, 404)
        if not _from_loopback(request):
            return _loopback_only()
        try:
            fields = await _fields(request)
        except _BadRequest as exc:
            return _oauth_error(exc.status, "invalid_request", str(exc))
        step = fields.get(p.ADVANCE_FIELD)
        if isinstance(step, str) and len(step) <= 64:
            try:
                step = float(step)
            except ValueError:
                pass
        try:
            now = self.clock.advance(step)
        except ValueError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        return JSONResponse({"scenario_time_s": now, "unix_time_s": self.clock.unix_now()}, headers=_NO_STORE)

    async def openapi(self, request: Request) -> Response:
        """``GET /openapi.json``: the OpenAPI 3 description of this server."""
        from loadtests.server.openapi import openapi_document

        return JSONResponse(openapi_document())

    def _unavailable(self) -> JSONResponse:
        return _oauth_error(503, "temporarily_unavailable", "the auth tier is saturated; retry later",
                            {"Retry-After": self.tier.retry_after()})


async def _fields(request: Request) -> dict[str, Any]:
    """The request's JSON object or ``application/x-www-form-urlencoded`` fields. Raises
    :class:`_BadRequest` for a body over :data:`MAX_BODY_BYTES` (413) or one that does not parse
    (deeply nested JSON included)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequest(f"request body over {MAX_BODY_BYTES} bytes", 413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise _BadRequest("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _BadRequest("the JSON body must be an object")
        return data
    try:
        text = bytes(body).decode("utf-8")
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=100))
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest("the body is not a form (application/x-www-form-urlencoded) or a JSON object") from None


def _text(fields: dict[str, Any], name: str) -> str | None:
    """Field ``name`` as text: None when absent, empty or not a short string."""
    value = fields.get(name)
    if isinstance(value, str) and len(value) <= MAX_FIELD_CHARS:
        return value
    return None


def _basis(value: Any) -> int | None:
    """The ``basis`` field (the ``jti`` of an access token): None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadRequest("basis must be the jti of an access token")
    text = str(value).strip()
    if not (text.isdecimal() and len(text) < 20):
        raise _BadRequest("basis must be the jti of an access token")
    return int(text)


def _from_loopback(request: Request) -> bool:
    return request.client is not None and request.client.host in ("127.0.0.1", "::1")


def _loopback_only() -> JSONResponse:
    return JSONResponse({"error": "forbidden", "error_description": "loopback clients only"}, 403)


def _oauth_error(status: int, error: str, description: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status,
                        headers={**_NO_STORE, **(headers or {})})


def _invalid_token(description: str) -> JSONResponse:
    challenge = f'Bearer error="invalid_token", error_description="{description}"'
    return JSONResponse({"error": "invalid_token", "error_description": description}, 401,
                        headers={p.WWW_AUTHENTICATE_HEADER: challenge})


def create_app(scenario: Scenario, strategy_name: str, **options: Any) -> Starlette:
    """The reference server for variant ``strategy_name`` of ``scenario`` as a Starlette app.

    ``options`` are those of :class:`TokenServer` (whose instance is ``app.state.server``). Raises
    ``KeyError`` for an unknown strategy and ``ValueError`` for a bad algorithm, key, store or time
    scale.
    """
    server = TokenServer(scenario, strategy_name, **options)
    routes = [
        Route(p.LOGIN_PATH, server.login, methods=["POST"]),
        Route(p.TOKEN_PATH, server.token, methods=["POST"]),
        Route(p.LOGOUT_PATH, server.logout, methods=["POST"]),
        Route(p.PING_PATH, server.ping, methods=["GET"]),
        Route(p.HEALTH_PATH, server.healthz, methods=["GET"]),
        Route(p.LEDGER_PATH, server.ledger_view, methods=["GET"]),
        Route(p.OPENAPI_PATH, server.openapi, methods=["GET"]),
        Route(p.CLOCK_PATH, server.advance_clock, methods=["POST"]),
        *(Route(path, server.api, methods=["GET"]) for path in p.API_PATHS),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.tier.serving()
        yield

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = server
    return app


def app_from_env() -> Starlette:
    """The app described by :data:`SETTINGS_ENV` (JSON: ``scenario_path``, ``strategy`` and the
    :class:`TokenServer` options): what each uvicorn worker process builds."""
    from sim.scenario import load_scenario

    settings = json.loads(os.environ[SETTINGS_ENV])
    scenario = load_scenario(settings.pop("scenario_path"))
    return create_app(scenario, settings.pop("strategy"), **settings)
