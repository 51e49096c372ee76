"""The token ledger: every token a server minted, with its session, parent and basis.

The ledger is the state behind a server policy. It has no clock: every call is told ``now``.
Drivers watch it through a :class:`LedgerObserver` (the simulator records events from it; the
reference server only keeps the counters).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Literal

TokenKind = Literal["access", "refresh"]


@dataclass(slots=True, eq=False)
class Token:
    """One minted token.

    ``parent`` is the refresh token whose use minted it (None for a login); ``basis`` is the access
    token the requester held when it decided it needed a new one (METRICS.md), None for a login or
    for a tab that had no token yet.
    """

    id: int
    kind: TokenKind
    session: int
    issued_at_s: float
    expires_at_s: float
    parent: int | None = None
    basis: int | None = None
    #: refresh tokens: when a newer refresh token replaced this one
    rotated_at_s: float | None = None
    #: refresh tokens: the grant its rotation returned (served again by "same_pair" grace)
    successor: tuple[int, int] | None = None
    #: refresh tokens: how many times it was accepted again inside the grace period
    grace_uses: int = 0
    revoked: bool = False


@dataclass(slots=True, eq=False)
class Session:
    """What one login creates: a refresh-token family and the access tokens minted from it."""

    id: int
    user: int
    started_at_s: float
    last_refresh_at_s: float
    revoked: bool = False
    newest_access: int | None = None


class LedgerObserver:
    """Hooks a driver may override to watch the ledger; each defaults to doing nothing."""

    def on_mint(self, token: Token, *, cause: str, duplicate: bool, now: float) -> None:
        """A token was signed. ``cause`` is ``login``, ``refresh``, ``grace`` or ``reissue``;
        ``duplicate`` is true for an access token whose (session, basis) was minted before."""

    def on_reuse(self, token: Token, *, outcome: str, now: float) -> None:
        """A rotated refresh token was presented again; ``outcome`` is ``grace_reuse`` (accepted),
        ``reuse_detected`` (rejected, and revoked per the policy) or ``resent_pair`` (answered
        with the tokens its rotation had already issued: no mint)."""

    def on_revoke(self, session: Session, *, now: float) -> None:
        """A session's refresh-token family was revoked."""


class Ledger:
    """Tokens and sessions of one server, plus running totals (``counters``)."""

    def __init__(self, observer: LedgerObserver | None = None) -> None:
        self.observer = observer or LedgerObserver()
        self.tokens: dict[int, Token] = {}
        self.sessions: dict[int, Session] = {}
        self.counters: Counter[str] = Counter()
        self._first_by_basis: set[tuple[int, int]] = set()
        self._ids = itertools.count(1)
        self._session_ids = itertools.count(1)

    def new_session(self, user: int, now: float) -> Session:
        """Open a session (a new refresh-token family) for ``user``."""
        session = Session(next(self._session_ids), user, now, now)
        self.sessions[session.id] = session
        self.counters["sessions"] += 1
        return session

    def mint(
        self,
        kind: TokenKind,
        session: Session,
        now: float,
        expires_at_s: float,
        *,
        cause: str,
        parent: int | None = None,
        basis: int | None = None,
    ) -> Token:
        """Sign a token and record it; counts a duplicate when (session, basis) was seen before."""
        token = Token(next(self._ids), kind, session.id, now, expires_at_s, parent, basis)
        self.tokens[token.id] = token
        self.counters[f"{kind}_mints"] += 1
        duplicate = False
        if kind == "access":
            session.newest_access = token.id
            if cause != "login":
                self.counters["renewal_access_mints"] += 1
            if basis is not None:
                key = (session.id, basis)
                duplicate = key in self._first_by_basis
                if duplicate:
                    self.counters["duplicate_tokens"] += 1
                else:
                    self._first_by_basis.add(key)
        self.observer.on_mint(token, cause=cause, duplicate=duplicate, now=now)
        return token

    def note_reuse(self, token: Token, outcome: str, now: float) -> None:
        """Count a rotated refresh token presented again (``grace_reuse`` / ``reuse_detected`` /
        ``resent_pair``)."""
        self.counters[{"grace_reuse": "grace_reuses", "reuse_detected": "reuse_detections",
                       "resent_pair": "resent_pairs"}[outcome]] += 1
        self.observer.on_reuse(token, outcome=outcome, now=now)

    def revoke_session(self, session: Session, now: float) -> None:
        """Revoke a whole refresh-token family."""
        if not session.revoked:
            session.revoked = True
            self.counters["revocations"] += 1
            self.observer.on_revoke(session, now=now)

    def session_of(self, token: Token) -> Session:
        return self.sessions[token.session]

    def totals(self) -> dict[str, int]:
        """The running totals as a plain dict (what the reference server's ``/ledger`` returns)."""
        keys = (
            "sessions", "access_mints", "refresh_mints", "renewal_access_mints", "refresh_calls",
            "duplicate_tokens", "reuse_detections", "grace_reuses", "resent_pairs", "revocations",
        )
        return {k: int(self.counters[k]) for k in keys}
