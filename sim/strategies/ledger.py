"""The token ledger: every token a server minted, with its session, parent and basis.

The ledger is the state behind a server policy. It has no clock: every call is told ``now``.
Drivers watch it through a :class:`LedgerObserver` (the simulator records events from it; the
reference server only keeps the counters).

Pruning: a ledger made with ``retain_s`` forgets a token ``retain_s`` after it expired and a
session ``retain_s`` after the last of its tokens did (a forgotten token can no longer be
presented: its ``exp`` has passed), so a long-running server's memory stays bounded. The running
totals (``counters``) are never pruned.

Forgetting the unreachable: a driver that knows which tokens its clients still hold (the
simulator, whose clients hold token objects) calls :meth:`Ledger.forget_unreachable` to drop every
token no one can present or look up again, however recently it expired, so that its memory
follows the live tokens, not every token minted.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

TokenKind = Literal["access", "refresh"]
#: the running total each kind of mint adds to (a refresh mints two: no string made per mint)
_MINTS = {"access": "access_mints", "refresh": "refresh_mints"}


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
    #: refresh tokens on a server with a race window: when the first refresh that passed the
    #: check of this token checked it (its rotation is under way from then)
    claimed_at_s: float | None = None
    #: refresh tokens on a server with a race window: when the earliest-sent presentation of it
    #: the server has checked so far was sent (where the driver knows send times, else when it
    #: was checked); race windows count from here, as they are measured
    first_sent_s: float | None = None
    #: refresh tokens on a server whose race window is drawn per claim: that window (seconds)
    claim_window_s: float | None = None
    revoked: bool = False
    #: access tokens of a deferred-commit server: the refresh token minted with it, which the
    #: first use of either commits
    pair: int | None = None


@dataclass(slots=True, eq=False)
class Session:
    """What one login creates: a refresh-token family and the access tokens minted from it."""

    id: int
    user: int
    started_at_s: float
    last_refresh_at_s: float
    revoked: bool = False
    newest_access: int | None = None
    #: the API refuses the session's access tokens too (a logout; a reuse revocation on servers
    #: that also revoke access tokens)
    access_revoked: bool = False
    #: the latest expiry of any token minted in the session (when it may be pruned)
    expires_at_s: float = 0.0
    #: (servers that keep one row per session) the refresh token the row holds now, the one it
    #: held before the last rotation written, and when that rotation was written
    current_refresh: int | None = None
    previous_refresh: int | None = None
    previous_until_s: float = 0.0
    #: the refresh token minted last in the session (servers that replay it to its parent)
    newest_refresh: int | None = None


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
        """A session's refresh-token family was revoked (``session.access_revoked`` tells whether
        its access tokens were too)."""

    def on_displace(self, token: Token, *, now: float) -> None:
        """A session row's write replaced the refresh token ``token`` with another rotation's:
        the server no longer honours ``token``, though nobody presented it."""


class Ledger:
    """Tokens and sessions of one server, plus running totals (``counters``).

    ``retain_s``: forget tokens and sessions this long after they expired (None: keep them, what
    the simulator does — it forgets the tokens no one holds instead, :meth:`forget_unreachable`)."""

    #: mints between two pruning passes
    PRUNE_EVERY = 1024

    def __init__(self, observer: LedgerObserver | None = None, *, retain_s: float | None = None) -> None:
        self.observer = observer or LedgerObserver()
        self.tokens: dict[int, Token] = {}
        self.sessions: dict[int, Session] = {}
        self.counters: Counter[str] = Counter()
        self.retain_s = retain_s
        # per session, the bases its access tokens were minted from: the only one, a tuple of a
        # few, a set of many (a set is 200 bytes, a tuple of two 56)
        self._bases: dict[int, int | tuple[int, ...] | set[int]] = {}
        self._ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._expiries: list[tuple[float, int, int]] = []  # (expires_at_s, 0 token / 1 session, id)
        self._mints_since_prune = 0

    def new_session(self, user: int, now: float) -> Session:
        """Open a session (a new refresh-token family) for ``user``."""
        session = Session(self._next_session_id(), user, now, now, expires_at_s=now)
        self.sessions[session.id] = session
        self.counters["sessions"] += 1
        if self.retain_s is not None:
            heapq.heappush(self._expiries, (now, 1, session.id))
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
        token = Token(self._next_token_id(), kind, session.id, now, expires_at_s, parent, basis)
        self.tokens[token.id] = token
        if expires_at_s > session.expires_at_s:  # (what max() keeps, NaN included)
            session.expires_at_s = expires_at_s
        self._count_mint(token, session, cause)
        duplicate = False
        if basis is not None and kind == "access":
            duplicate = not self._first_basis(session.id, basis)
            if duplicate:
                self.counters["duplicate_tokens"] += 1
        self.observer.on_mint(token, cause=cause, duplicate=duplicate, now=now)
        if self.retain_s is not None:
            heapq.heappush(self._expiries, (expires_at_s, 0, token.id))
            self._mints_since_prune += 1
            if self._mints_since_prune >= self.PRUNE_EVERY:
                self.prune(now)
        return token

    def _next_token_id(self) -> int:
        return next(self._ids)

    def _next_session_id(self) -> int:
        return next(self._session_ids)

    def _count_mint(self, token: Token, session: Session, cause: str) -> None:
        self.counters[_MINTS[token.kind]] += 1
        if token.kind == "access":
            session.newest_access = token.id
            if cause != "login":
                self.counters["renewal_access_mints"] += 1

    def _first_basis(self, session_id: int, basis: int) -> bool:
        """Note that (session, basis) got an access token; True if it is the first."""
        bases = self._bases
        seen = bases.get(session_id)
        if seen is None:
            bases[session_id] = basis
            return True
        kind = type(seen)
        if kind is int:
            if seen == basis:
                return False
            bases[session_id] = (seen, basis)
            return True
        if basis in seen:
            return False
        if kind is set:
            seen.add(basis)
        else:
            bases[session_id] = seen + (basis,) if len(seen) < 8 else {*seen, basis}
        return True

    def note_reuse(self, token: Token, outcome: str, now: float) -> None:
        """Count a rotated refresh token presented again (``grace_reuse`` / ``reuse_detected`` /
        ``resent_pair``)."""
        self.counters[{"grace_reuse": "grace_reuses", "reuse_detected": "reuse_detections",
                       "resent_pair": "resent_pairs"}[outcome]] += 1
        self.observer.on_reuse(token, outcome=outcome, now=now)

    def note_displaced(self, token: Token, now: float) -> None:
        """A rotation's write replaced ``token`` in its session row (see
        :meth:`LedgerObserver.on_displace`)."""
        self.observer.on_displace(token, now=now)

    def revoke_session(self, session: Session, now: float, *, access: bool = False) -> None:
        """Revoke a whole refresh-token family; with ``access`` its access tokens too."""
        access_newly = access and not session.access_revoked
        session.access_revoked = session.access_revoked or access
        if not session.revoked:
            session.revoked = True
            self.counters["revocations"] += 1
            self.observer.on_revoke(session, now=now)
        elif access_newly:
            self.observer.on_revoke(session, now=now)

    def session_of(self, token: Token) -> Session:
        return self.sessions[token.session]

    def prune(self, now: float) -> int:
        """Forget what expired more than ``retain_s`` before ``now``; returns how many tokens and
        sessions went. Nothing happens on a ledger without ``retain_s``."""
        self._mints_since_prune = 0
        if self.retain_s is None:
            return 0
        horizon = now - self.retain_s
        gone = 0
        while self._expiries and self._expiries[0][0] < horizon:
            _, what, key = heapq.heappop(self._expiries)
            if what == 0:
                gone += self.tokens.pop(key, None) is not None
                continue
            session = self.sessions.get(key)
            if session is None:
                continue
            if session.expires_at_s >= horizon:  # extended since: look again when it expires
                heapq.heappush(self._expiries, (session.expires_at_s, 1, key))
                continue
            del self.sessions[key]
            self._bases.pop(key, None)
            gone += 1
        return gone

    def forget_unreachable(self, held: Callable[[Token], bool],
                           reaches: Callable[[Token], Iterable[int]]) -> list[Token]:
        """Forget the tokens that can no longer matter and return them: those ``held`` (the
        driver's answer: does a client, a call in flight or the driver itself still hold this
        token?) says no one holds, unless the server reaches them by id from a token kept
        (``reaches``: the server policy's
        :meth:`~sim.strategies.server.ServerPolicy.looked_up_from`). Nothing else is looked up by
        id, so every answer and total stays what it would have been. The running totals stay.
        ``held`` is called once per token, from a loop over :attr:`tokens`' values (a driver that
        counts references counts the loop's own)."""
        tokens = self.tokens
        keep: set[int] = set()
        reached: list[int] = []
        for token in tokens.values():
            if held(token):
                keep.add(token.id)
                reached.extend(reaches(token))  # most reach nothing
        while reached:
            i = reached.pop()
            if i not in keep and i in tokens:
                keep.add(i)
                reached.extend(reaches(tokens[i]))
        if len(keep) == len(tokens):
            return []
        gone = [token for token in tokens.values() if token.id not in keep]
        self.tokens = {i: token for i, token in tokens.items() if i in keep}
        return gone

    def forget_sessions(self, named: set) -> list[int]:
        """Forget the sessions of which no token is kept (after :meth:`forget_unreachable`) and
        that the driver does not name in ``named`` (a client that still knows its session id);
        returns their ids. No one can present anything of theirs again."""
        live = set(named)
        live.update(token.session for token in self.tokens.values())
        if len(live) >= len(self.sessions) and all(i in live for i in self.sessions):
            return []
        gone = [i for i in self.sessions if i not in live]
        self.sessions = {i: session for i, session in self.sessions.items() if i in live}
        self._bases = {i: bases for i, bases in self._bases.items() if i in live}
        return gone

    def totals(self) -> dict[str, int]:
        """The running totals as a plain dict (what the reference server's ``/ledger`` returns)."""
        return {k: int(self.counters[k]) for k in TOTALS}


#: the running totals a ledger keeps
TOTALS = (
    "sessions", "access_mints", "refresh_mints", "renewal_access_mints", "refresh_calls",
    "duplicate_tokens", "reuse_detections", "grace_reuses", "resent_pairs", "revocations",
)
