"""Records of a simulated run: every happening goes through :meth:`Recorder.record` (one record
type, the ``events`` columns). Counts go to a :class:`~sim.metrics.Counts` as they happen; full
rows are kept only when the events table was asked for."""

from __future__ import annotations

import math

from sim.metrics import EVENT_COLUMNS, WATCHED_EVENTS, Counts, Divergence, Level
from sim.strategies.ledger import LedgerObserver, Session, Token

_WATCHED = WATCHED_EVENTS
#: a mint's outcome by (kind, cause, duplicate): made once, not per mint
_MINT_OUTCOMES: dict[tuple, str] = {}
_ROW = ["t_s", "event", "outcome", "user", "tab", "session", "token", "basis", "latency_ms"]


class Recorder(LedgerObserver):
    """Collects one simulated run of one variant; also watches the ledger for mints and reuse
    (and keeps the most access tokens of one session valid at once, as they are minted)."""

    def __init__(self, strategy: str, replication: int, keep_events: bool, warmup_s: float, duration_s: float):
        self.strategy = strategy
        self.replication = replication
        self.counts = Counts(warmup_s, duration_s, keep_values=keep_events, window_from_bins=True)
        self.end_s = warmup_s + duration_s
        self.rows: list[tuple] | None = [] if keep_events else None
        self.busy = Level()
        self.queued = Level()
        self._valid: dict[int, list[float]] = {}
        self.valid_max = 0
        self.divergence = Divergence()

    def record(self, t_s, event, outcome="", user=None, tab=None, session=None, token=None, basis=None,
               latency_ms=math.nan) -> None:
        """One happening (EVENT_COLUMNS); see sim.metrics for the vocabulary. Requests go
        through :meth:`request`."""
        self.counts.count(event, outcome, t_s)
        if self.rows is not None:
            self.rows.append((t_s, event, str(outcome), user, tab, session, token, basis, latency_ms))
        if event in _WATCHED:
            for derived, value in self.divergence.feed(t_s, event, outcome, session, token):
                self.counts.count(derived, "", t_s)
                if value == value:
                    self.counts.race_to_logout(t_s, value)
                if self.rows is not None:
                    self.rows.append((t_s, derived, "", user, tab, session,
                                      token if derived == "stranded_token" else None, None, value * 1000.0))

    def request(self, t_s, added_ms, user, tab, session) -> None:
        """A request issued at ``t_s``; ``added_ms`` None when it failed."""
        self.counts.request(t_s, added_ms)
        if self.rows is not None:
            self.rows.append((t_s, "request", "failed" if added_ms is None else "ok", user, tab, session, None, None,
                              math.nan if added_ms is None else added_ms))

    def on_mint(self, token: Token, *, cause: str, duplicate: bool, now: float) -> None:
        key = (token.kind, cause, duplicate)
        outcome = _MINT_OUTCOMES.get(key)
        if outcome is None:
            outcome = _MINT_OUTCOMES[key] = f"{token.kind}_{cause}" + ("_duplicate" if duplicate else "")
        if self.rows is None:
            self.counts.count("mint", outcome, now)  # all record() does with a mint when no rows are kept
        else:
            self.record(now, "mint", outcome, session=token.session, token=token.id, basis=token.basis)
        if token.kind == "access":
            # valid from issue to expiry (cut at the run's end); one expiring as another is
            # issued does not overlap it
            expiry = min(token.expires_at_s, self.end_s)
            valid = self._valid.get(token.session)
            if valid is None or (len(valid) == 1 and valid[0] <= now):  # (most often: its one token had expired)
                self._valid[token.session] = valid = [expiry]
            else:
                valid = self._valid[token.session] = [e for e in valid if e > now] + [expiry]
            if len(valid) > self.valid_max:
                self.valid_max = len(valid)

    def on_reuse(self, token: Token, *, outcome: str, now: float) -> None:
        self.record(now, outcome, session=token.session, token=token.id)

    def on_revoke(self, session: Session, *, now: float) -> None:
        self.record(now, "revoke", session=session.id)

    def forget(self, tokens: list[Token], sessions: list[int], now: float) -> None:
        """Drop what only ``tokens`` and ``sessions`` (forgotten by the ledger at ``now``: no one
        can present anything of theirs again) and expired access tokens kept alive here: nothing
        counted later changes."""
        self.divergence.forget((token.session, token.id) for token in tokens if token.kind == "refresh")
        self.divergence.forget_sessions(sessions)
        # an expiry at or before now is left out by every later mint's look (e > now)
        self._valid = {session: valid for session, valid in self._valid.items() if max(valid) > now}

    def on_displace(self, token: Token, *, now: float) -> None:
        self.record(now, "displaced", session=token.session, token=token.id)

    def events(self) -> pd.DataFrame | None:
        if self.rows is None:
            return None
        import pandas as pd

        df = pd.DataFrame(self.rows, columns=_ROW)
        df["strategy"] = self.strategy
        df["replication"] = self.replication
        for col in ("user", "tab", "session", "token", "basis"):
            df[col] = df[col].astype("Int64")
        return df.sort_values("t_s", kind="stable").reset_index(drop=True)[EVENT_COLUMNS]


def max_valid_per_session(tokens: list, end_s: float) -> int:
    """The most access tokens of one session valid at one instant (a token is valid from its
    issue to its expiry; one expiring as another is issued does not overlap it)."""
    import numpy as np

    access = [t for t in tokens if t.kind == "access"]
    if not access:
        return 0
    session = np.array([t.session for t in access] * 2)
    when = np.array([t.issued_at_s for t in access] + [min(t.expires_at_s, end_s) for t in access])
    delta = np.array([1] * len(access) + [-1] * len(access))
    order = np.lexsort((delta, when, session))
    session, delta = session[order], delta[order]
    level = np.cumsum(delta)
    starts = np.r_[0, np.flatnonzero(np.diff(session)) + 1]
    level = level - np.repeat(np.r_[0, level[starts[1:] - 1]], np.diff(np.r_[starts, len(level)]))
    return int(level.max())
