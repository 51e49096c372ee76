"""Server policies (token issuers), sans-IO: what to answer to a login, an API call and a refresh.

A policy holds no state and reads no clock; the :class:`~sim.strategies.ledger.Ledger` it is handed
holds the tokens. Drivers: :mod:`sim.engine` (virtual time) and :mod:`loadtests.server` (HTTP).

Refresh is split in two so that drivers can place the service time between them:
:meth:`ServerPolicy.begin_refresh` runs when a worker picks the call up, and
:meth:`ServerPolicy.finish_refresh` when it writes its answer. An ``atomic`` server decides
everything in ``finish``; a check-then-write server checks in ``begin`` and writes in ``finish``
without looking again, which is how concurrent refreshes of one token both succeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field, model_validator

from sim.distributions import DurationDist
from sim.model import Model
from sim.strategies.ledger import Ledger, Session, Token
from sim.units import Duration


# not frozen: made per refresh, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class Grant:
    """Tokens handed to a client: an access token and, for dual-token servers, a refresh token."""

    access: Token
    refresh: Token | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused refresh. ``reason``: ``expired``, ``revoked``, ``reuse_detected``,
    ``unauthenticated`` (a replay the server accepted but answers as unauthenticated),
    ``unsupported`` (no refresh tokens on this server). The HTTP form is
    ``400 {"error": "invalid_grant"}`` (``unsupported_grant_type`` for ``unsupported``)."""

    reason: str

    @property
    def error(self) -> str:
        return "unsupported_grant_type" if self.reason == "unsupported" else "invalid_grant"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The API tier's answer to a presented access token.

    ``status``: ``ok``, ``expired`` (401, counted as an expiry failure) or ``invalid`` (401: revoked
    or unknown). ``reissued`` is a new token a sliding server returns alongside an ``ok``.
    """

    status: Literal["ok", "expired", "invalid"]
    reissued: Token | None = None


OK = Verdict("ok")
EXPIRED = Verdict("expired")
INVALID = Verdict("invalid")


# not frozen: made per refresh, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class PendingRefresh:
    """A refresh between :meth:`~ServerPolicy.begin_refresh` and :meth:`~ServerPolicy.finish_refresh`."""

    token: Token
    basis: int | None
    #: the outcome of the check, for check-then-write servers; None means decide at finish
    decision: str | None


class ServerPolicy(Model):
    """Base of issuer behaviours. Lifetimes default to the scenario's ``[tokens]`` table."""

    kind: str
    access_ttl_s: Duration = Field(alias="access_ttl", gt=0)
    refresh_ttl_s: Duration = Field(default="7d", alias="refresh_ttl", gt=0)
    #: idle lifetime of the refresh family: unused this long, it expires (Keycloak's SSO idle)
    refresh_idle_ttl_s: Duration | None = Field(default=None, alias="refresh_idle_ttl", gt=0)
    preset: str | None = None

    def login(self, ledger: Ledger, user: int, now: float) -> Grant:
        """Open a session for ``user`` and mint its first tokens."""
        raise NotImplementedError

    def authorize(self, ledger: Ledger, token: Token, now: float, leeway_s: float = 0.0) -> Verdict:
        """Check an access token at the moment the API processes the request.

        Invalid when its session's access tokens were revoked (a logout, or a reuse revocation
        that covers access tokens); expired means ``now > exp + leeway`` (PyJWT's rule). An
        accepted token minted with a pair (:attr:`~sim.strategies.ledger.Token.pair`) goes to
        :meth:`_accepted`."""
        if token.revoked or ledger.sessions[token.session].access_revoked:
            return INVALID
        if now > token.expires_at_s + leeway_s:
            return EXPIRED
        if token.pair is not None:
            self._accepted(ledger, token)
        return OK

    def _accepted(self, ledger: Ledger, token: Token) -> None:
        """:meth:`authorize` accepted ``token``, an access token minted with a pair (a
        deferred-commit server's: it commits here)."""

    def logout(self, ledger: Ledger, token: Token, now: float) -> None:
        """The user logged out with ``token`` (any of the session's tokens): the session is
        revoked, its refresh tokens and its access tokens alike."""
        ledger.revoke_session(ledger.session_of(token), now, access=True)

    def plain_at(self, ledger: Ledger, token: Token, now: float, leeway_s: float = 0.0) -> bool:
        """Whether :meth:`authorize` would answer a plain ``ok`` at ``now`` — no re-issued token,
        nothing written — whatever else happens meanwhile, so an engine may skip the call.
        Plain at ``now`` must mean plain at every earlier instant since the token was sent (the
        answer is monotone in time). False means "ask :meth:`authorize`"."""
        if token.revoked or ledger.sessions[token.session].access_revoked:
            return False
        return not now > token.expires_at_s + leeway_s

    def plain_until_s(self, ledger: Ledger, token: Token, leeway_s: float = 0.0) -> float:
        """Until when :meth:`plain_at` stays true for ``token`` while nothing else changes (no
        revocation, no rotation): a pure answer an engine uses to carry out page views in bulk.
        The instant is exact in real arithmetic; an engine keeps a margin from it for rounding
        and asks :meth:`plain_at` near it. ``-inf`` means "ask every time"."""
        if token.revoked or ledger.sessions[token.session].access_revoked:
            return -math.inf
        return token.expires_at_s + leeway_s

    def begin_refresh(self, ledger: Ledger, token: Token, basis: int | None, now: float,
                      rng: np.random.Generator | None = None, sent_s: float | None = None) -> PendingRefresh:
        """A worker picked up a refresh call presenting ``token`` on behalf of ``basis``. ``rng``:
        the driver's generator, for servers that draw (a race window); ``sent_s``: when the
        client sent the call, where the driver knows it (a race window counts between sends, as
        it is measured), else None."""
        ledger.counters["refresh_calls"] += 1
        return PendingRefresh(token, basis, "unsupported")

    def finish_refresh(self, ledger: Ledger, pending: PendingRefresh, now: float) -> Grant | Rejection:
        """The worker writes its answer: new tokens, or a rejection."""
        return Rejection("unsupported")

    def refresh(self, ledger: Ledger, token: Token, basis: int | None, now: float,
                rng: np.random.Generator | None = None) -> Grant | Rejection:
        """Begin and finish at one instant (no service time between)."""
        return self.finish_refresh(ledger, self.begin_refresh(ledger, token, basis, now, rng), now)

    def access_expiry(self, session: Session, now: float) -> float:
        return now + self.access_ttl_s

    def looked_up_from(self, ledger: Ledger, token: Token) -> tuple:
        """The ids of the tokens this server may look up when ``token`` is presented or used
        (a driver that forgets tokens keeps these while it keeps ``token``,
        :meth:`~sim.strategies.ledger.Ledger.forget_unreachable`)."""
        return ()

    def mints_per_refresh(self) -> int:
        """Signatures one successful refresh costs (access + rotated refresh token)."""
        return 1

    def mints_per_login(self) -> int:
        """Signatures one login costs (the tokens a login grants)."""
        return 1


class DualTokenServer(ServerPolicy):
    """Short access tokens renewed with a refresh token at a token endpoint.

    ``rotation``: each refresh returns a new refresh token. ``reuse_detection`` decides what a
    rotated refresh token presented again does: ``none`` accepts it (it stays valid, as Keycloak's
    and simplejwt's defaults), ``token`` rejects it alone (simplejwt's blacklist), ``family``
    revokes the session (Auth0, Hydra, Okta). Inside ``grace_period`` (and at most
    ``grace_reuse_count`` times, 0 = unlimited) a reuse is accepted and returns a ``new_pair``
    (Auth0, Hydra) or the ``same_pair`` the rotation returned (FusionAuth). ``revoke_access_on_reuse``
    also makes the family's access tokens invalid at the API (Okta).

    ``atomic = false`` is a server that checks the presented token when it reads it and writes
    the rotation later without looking again (check-then-write: it checks before taking its
    lock). ``concurrent_replay`` says what such a server answers to a refresh that passed the check
    while another refresh of the same token rotated it in the meantime: ``new_pair`` (it mints
    again: both succeed with different pairs) or ``same_pair`` (under its lock it finds the
    rotation done and answers with the pair already issued: a *re-sent pair*, not a mint).

    ``race_window`` (check-then-write servers; a duration or a distribution) is how long after
    the check of the first refresh that passed a later presentation of the same token still
    finds it unrotated: one drawn per later presentation (with the driver's generator), which
    passes too when it is checked less than its draw after that first check (a concurrent
    replay, answered per ``concurrent_replay``), and otherwise finds the token rotated (reuse
    detection or grace). A draw per presentation, not per token, because what decides a real
    race is both the first refresh's commit and where the server's scheduling puts the later
    check: measured by pairs of presentations ``δ`` apart, ``P(pass | δ)`` is the window's
    survival function (``refreshlab probe-race``; ``validate`` estimates it from a load test).
    Without it, a check-then-write server's window lasts until the first refresh writes (its
    service time); a window of 0 is an atomic server.

    ``race_window_offsets`` says between what the window counts: ``checked`` (from the check of
    the first refresh that passed to a later presentation's check, the driver's network and
    queue included) or ``sent`` (from when the token's earliest-sent presentation the server
    has seen was sent to when a later one was sent, where the driver knows send times: how
    ``refreshlab probe-race`` and ``validate`` measure it, the real server's own send-to-check
    times being already in the measured window).

    ``race_window_scope`` says who draws the window: ``presentation`` (each later presentation
    its own draw, as above) or ``claim`` (one draw when the first refresh claims the token, shared
    by every later presentation of it: how long that refresh's rotation stays invisible decides
    them all). Pairs of presentations cannot tell the two apart (both give ``P(pass | δ)`` as
    the window's survival function); three or more racing presentations can: with ``claim``
    they tend to pass or fail together.

    What a reuse inside the grace window gets (``grace_returns``): ``new_pair``, ``same_pair``,
    ``reject`` (refused as a reuse, nothing revoked: fliks) or ``unauthenticated`` (accepted as a
    grace reuse — nothing revoked, nothing minted — but answered as unauthenticated, so the
    client shows its login page: nocturne's grace path).

    ``parent_replay`` (GoTrue): a rotated refresh token whose successor is still the session's
    newest refresh token — the client never stored that answer — is accepted at any time, with
    a new access token and that successor again (no new refresh token); other reuses follow the
    grace period and ``reuse_detection``.

    ``commit = "first_use"`` (SuperTokens' deferred commit): the session's *committed* refresh
    token mints a child pair on every presentation without changing any state, so concurrent
    refreshes all succeed; a child is committed by its first use — presented at the refresh
    endpoint (which then mints its own child) or its access token's first accepted API call —
    and any other refresh token (an uncommitted sibling, an older one) is theft: a reuse
    detection, revoking per ``reuse_detection``.
    """

    kind: Literal["dual_token"] = "dual_token"
    rotation: bool = False
    reuse_detection: Literal["none", "token", "family"] = "none"
    grace_period_s: Duration = Field(default="0s", alias="grace_period")
    grace_reuse_count: int = Field(default=0, ge=0)
    grace_returns: Literal["new_pair", "same_pair", "reject", "unauthenticated"] = "new_pair"
    parent_replay: bool = False
    commit: Literal["rotation", "first_use"] = "rotation"
    rotation_store: Literal["per_token", "session_row"] = "per_token"
    atomic: bool = True
    revoke_access_on_reuse: bool = False
    concurrent_replay: Literal["new_pair", "same_pair"] = "new_pair"
    race_window: DurationDist | None = None
    race_window_scope: Literal["presentation", "claim"] = "presentation"
    race_window_offsets: Literal["checked", "sent"] = "checked"

    @model_validator(mode="after")
    def _coherent(self):
        if self.race_window is not None and (self.atomic or not self.rotation):
            raise ValueError("race_window needs rotation = true and atomic = false")
        if (self.race_window_scope != "presentation" or self.race_window_offsets != "checked") and self.race_window is None:
            raise ValueError("race_window_scope and race_window_offsets need a race_window")
        if not self.rotation and (self.reuse_detection != "none" or self.grace_period_s > 0):
            raise ValueError("reuse_detection and grace_period need rotation = true")
        if self.concurrent_replay == "same_pair" and (self.atomic or not self.rotation):
            raise ValueError("concurrent_replay = 'same_pair' needs rotation = true and atomic = false")
        if self.commit == "first_use" and not (self.rotation and self.atomic and self.rotation_store == "per_token"
                                               and self.grace_period_s == 0 and not self.parent_replay):
            raise ValueError("commit = 'first_use' needs rotation = true, atomic = true, "
                             "rotation_store = 'per_token', no grace_period and no parent_replay")
        if self.parent_replay and (not self.rotation or self.rotation_store != "per_token"):
            raise ValueError("parent_replay needs rotation = true and rotation_store = 'per_token'")
        return self

    def login(self, ledger, user, now):
        session = ledger.new_session(user, now)
        access = ledger.mint("access", session, now, self.access_expiry(session, now), cause="login")
        refresh = ledger.mint("refresh", session, now, self._refresh_expiry(session, now), cause="login")
        session.current_refresh = refresh.id
        return Grant(access, refresh)

    def _accepted(self, ledger, token):
        if self._commits(ledger, token):
            ledger.session_of(token).current_refresh = token.pair  # its pair's first use

    def _commits(self, ledger: Ledger, token: Token) -> bool:
        """Whether accepting ``token`` (an access token) commits the refresh token minted with
        it (deferred commit: that token's parent is still the committed one)."""
        if token.pair is None:
            return False
        child = ledger.tokens.get(token.pair)
        return child is not None and ledger.session_of(token).current_refresh == child.parent

    def plain_at(self, ledger, token, now, leeway_s=0.0):
        # another tab's reuse may revoke the session while the request travels; a pending commit
        # is a write (once the session moved past the pair's parent it never comes back to it)
        return (not self.revoke_access_on_reuse and not self._commits(ledger, token)
                and super().plain_at(ledger, token, now, leeway_s))

    def plain_until_s(self, ledger, token, leeway_s=0.0):
        if self.revoke_access_on_reuse or self._commits(ledger, token):
            return -math.inf
        return super().plain_until_s(ledger, token, leeway_s)

    def begin_refresh(self, ledger, token, basis, now, rng=None, sent_s=None):
        ledger.counters["refresh_calls"] += 1
        if self.atomic:
            return PendingRefresh(token, basis, None)
        sent_s = now if sent_s is None or self.race_window_offsets == "checked" else sent_s
        if self.race_window is not None:
            token.first_sent_s = sent_s if token.first_sent_s is None else min(token.first_sent_s, sent_s)
        decision = self._check(ledger, token, now, rng, sent_s)
        if decision == "ok" and self.race_window is not None and token.claimed_at_s is None:
            token.claimed_at_s = now
            if self.race_window_scope == "claim":
                token.claim_window_s = self._draw_window(rng)
        return PendingRefresh(token, basis, decision)

    def _draw_window(self, rng: np.random.Generator | None) -> float:
        if rng is None and self.race_window.dist != "constant":
            raise ValueError("a race_window distribution needs the driver's generator (rng)")
        return max(float(self.race_window.sample(rng, 1)[0]), 0.0)

    def finish_refresh(self, ledger, pending, now):
        token = pending.token
        decision = pending.decision or self._check(ledger, token, now)
        if decision in ("expired", "revoked"):
            return Rejection(decision)
        if decision == "reuse_detected":
            ledger.note_reuse(token, "reuse_detected", now)
            if self.reuse_detection == "family":
                ledger.revoke_session(ledger.session_of(token), now, access=self.revoke_access_on_reuse)
            return Rejection("reuse_detected")
        session = ledger.session_of(token)
        if decision == "grace_reuse" and self.grace_returns == "reject":
            ledger.note_reuse(token, "reuse_detected", now)
            return Rejection("reuse_detected")
        if decision == "grace_reuse" and self.grace_returns == "unauthenticated":
            ledger.note_reuse(token, "grace_reuse", now)
            token.grace_uses += 1
            return Rejection("unauthenticated")
        session.last_refresh_at_s = now
        if decision == "parent_replay":
            ledger.note_reuse(token, "grace_reuse", now)
            access = ledger.mint("access", session, now, self.access_expiry(session, now),
                                 cause="grace", parent=token.id, basis=pending.basis)
            return Grant(access, ledger.tokens[session.newest_refresh])
        if decision == "commit":
            session.current_refresh = token.id
        if decision == "grace_reuse":
            ledger.note_reuse(token, "grace_reuse", now)
            token.grace_uses += 1
            if self.grace_returns == "same_pair" and token.successor:
                ledger.note_reuse(token, "resent_pair", now)
                access_id, refresh_id = token.successor
                return Grant(ledger.tokens[access_id], ledger.tokens[refresh_id])
        if decision == "ok" and self.concurrent_replay == "same_pair" and token.successor:
            # rotated by a concurrent refresh after this one's check: hand its pair out again
            ledger.note_reuse(token, "resent_pair", now)
            access_id, refresh_id = token.successor
            return Grant(ledger.tokens[access_id], ledger.tokens[refresh_id])
        cause = "grace" if decision == "grace_reuse" else "refresh"
        access = ledger.mint(
            "access", session, now, self.access_expiry(session, now),
            cause=cause, parent=token.id, basis=pending.basis,
        )
        if not self.rotation:
            return Grant(access, token)
        refresh = ledger.mint(
            "refresh", session, now, self._refresh_expiry(session, now), cause=cause, parent=token.id
        )
        session.newest_refresh = refresh.id
        if self.commit == "first_use":
            access.pair = refresh.id
            return Grant(access, refresh)  # nothing else changes until the child's first use
        if token.rotated_at_s is None:
            token.rotated_at_s = now
            token.successor = (access.id, refresh.id)
        if self.rotation_store == "session_row":
            # the row is written with what this refresh read: a concurrent write is overwritten,
            # and the token it put there is no longer honoured (unless nothing is checked)
            displaced = ledger.tokens.get(session.current_refresh) if session.current_refresh != token.id else None
            if displaced is not None and self.reuse_detection != "none":
                ledger.note_displaced(displaced, now)
            session.previous_refresh, session.current_refresh = token.id, refresh.id
            session.previous_until_s = now + self.grace_period_s
        return Grant(access, refresh)

    def mints_per_refresh(self):
        return 2 if self.rotation else 1

    def looked_up_from(self, ledger, token):
        # a rotated token's pair (re-sent to a reuse), a deferred-commit access token's pair
        # (committed by its first use), the session's newest refresh token (replayed to its
        # parent) and the one its row holds (displaced by a concurrent write)
        reads_session = self.parent_replay or self.rotation_store == "session_row"
        if token.pair is None and not reads_session:
            return token.successor or ()  # (asked of every token kept, at each pass: the usual answer, no list made)
        ids = list(token.successor or ())
        if token.pair is not None:
            ids.append(token.pair)
        if not reads_session:
            return ids
        session = ledger.sessions[token.session]
        if self.parent_replay and session.newest_refresh is not None:
            ids.append(session.newest_refresh)
        if self.rotation_store == "session_row" and session.current_refresh is not None:
            ids.append(session.current_refresh)
        return ids

    def mints_per_login(self):
        return 2  # access and refresh token

    def _check(self, ledger: Ledger, token: Token, now: float, rng: np.random.Generator | None = None,
               sent_s: float | None = None) -> str:
        session = ledger.session_of(token)
        if token.revoked or session.revoked:
            return "revoked"
        if now > token.expires_at_s or (
            self.refresh_idle_ttl_s is not None and now - session.last_refresh_at_s > self.refresh_idle_ttl_s
        ):
            return "expired"
        if self.commit == "first_use":
            if token.id == session.current_refresh:
                return "ok"
            return "commit" if token.parent == session.current_refresh else "reuse_detected"
        if self.rotation_store == "session_row" and self.rotation:
            if token.id == session.current_refresh or self.reuse_detection == "none":
                return "ok"
            within = token.id == session.previous_refresh and now <= session.previous_until_s and self.grace_period_s > 0
            if within and (self.grace_reuse_count == 0 or token.grace_uses < self.grace_reuse_count):
                return "grace_reuse"
            return "reuse_detected"
        rotated_at_s = token.rotated_at_s
        if token.claimed_at_s is not None:
            window_s = token.claim_window_s if token.claim_window_s is not None else self._draw_window(rng)
            if (now if sent_s is None else sent_s) - token.first_sent_s < window_s:
                return "ok"  # the first refresh's rotation is not visible to this check yet
            rotated_at_s = token.claimed_at_s if rotated_at_s is None else min(rotated_at_s, token.claimed_at_s)
        if rotated_at_s is None or self.reuse_detection == "none":
            return "ok"
        if self.parent_replay and session.newest_refresh is not None:
            newest = ledger.tokens.get(session.newest_refresh)
            if newest is not None and newest.parent == token.id:
                return "parent_replay"
        within = now - rotated_at_s <= self.grace_period_s and self.grace_period_s > 0
        if within and (self.grace_reuse_count == 0 or token.grace_uses < self.grace_reuse_count):
            return "grace_reuse"
        return "reuse_detected"

    def _refresh_expiry(self, session: Session, now: float) -> float:
        absolute = session.started_at_s + self.refresh_ttl_s
        if self.refresh_idle_ttl_s is None:
            return absolute
        return min(absolute, now + self.refresh_idle_ttl_s)


class SlidingServer(ServerPolicy):
    """Sliding expiration: one token, re-issued by the API on use when its remaining life is under
    ``window`` (a window >= the lifetime re-issues on every request). No refresh endpoint; an
    expired token means a new login. ``absolute_max`` caps a session's life however active."""

    kind: Literal["sliding"] = "sliding"
    window_s: Duration = Field(alias="window", gt=0)
    absolute_max_s: Duration | None = Field(default=None, alias="absolute_max", gt=0)

    def login(self, ledger, user, now):
        session = ledger.new_session(user, now)
        return Grant(ledger.mint("access", session, now, self.access_expiry(session, now), cause="login"), None)

    def authorize(self, ledger, token, now, leeway_s=0.0):
        verdict = super().authorize(ledger, token, now, leeway_s)
        if verdict.status != "ok" or token.expires_at_s - now >= self.window_s:
            return verdict
        session = ledger.session_of(token)
        expiry = self.access_expiry(session, now)
        if expiry <= token.expires_at_s:
            return verdict  # capped by absolute_max: nothing newer to give
        reissued = ledger.mint("access", session, now, expiry, cause="reissue", parent=token.id, basis=token.id)
        return Verdict("ok", reissued)

    def plain_at(self, ledger, token, now, leeway_s=0.0):
        return super().plain_at(ledger, token, now, leeway_s) and token.expires_at_s - now >= self.window_s

    def plain_until_s(self, ledger, token, leeway_s=0.0):
        return min(super().plain_until_s(ledger, token, leeway_s), token.expires_at_s - self.window_s)

    def access_expiry(self, session, now):
        expiry = now + self.access_ttl_s
        if self.absolute_max_s is not None:
            expiry = min(expiry, session.started_at_s + self.absolute_max_s)
        return expiry


AnyServerPolicy = Annotated[Union[DualTokenServer, SlidingServer], Field(discriminator="kind")]
