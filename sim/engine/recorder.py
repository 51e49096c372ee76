"""Records of a simulated run: every happening goes through :meth:`Recorder.record` (one record
type, the ``events`` columns); counts go to a :class:`~sim.metrics.Tally`, full rows only when
the events table was asked for."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim.metrics import EVENT_COLUMNS, Level, Tally
from sim.strategies.ledger import LedgerObserver, Session, Token


_ROW = ["t_s", "event", "outcome", "user", "tab", "session", "token", "basis", "latency_ms"]


class Recorder(LedgerObserver):
    """Collects one simulated run of one variant; also watches the ledger for mints and reuse."""

    def __init__(self, strategy: str, replication: int, keep_events: bool):
        self.strategy = strategy
        self.replication = replication
        self.tally = Tally()
        self.rows: list[tuple] | None = [] if keep_events else None
        self.busy = Level()
        self.queued = Level()
        self.now = lambda: 0.0  # set by the engine to its clock

    def record(self, t_s, event, outcome="", user=None, tab=None, session=None, token=None, basis=None,
               latency_ms=math.nan) -> None:
        """One happening (EVENT_COLUMNS); see sim.metrics for the vocabulary."""
        if event == "request":
            self.tally.request_t_s.append(t_s)
            self.tally.request_added_ms.append(latency_ms)
        else:
            self.tally.count(event, outcome, t_s)
        if self.rows is not None:
            self.rows.append((t_s, event, outcome, user, tab, session, token, basis, latency_ms))

    def on_mint(self, token: Token, *, cause: str, duplicate: bool, now: float) -> None:
        outcome = f"{token.kind}_{cause}" + ("_duplicate" if duplicate else "")
        self.record(now, "mint", outcome, session=token.session, token=token.id, basis=token.basis)

    def on_reuse(self, token: Token, *, outcome: str, now: float) -> None:
        self.record(now, outcome, session=token.session, token=token.id)

    def on_revoke(self, session: Session, *, now: float) -> None:
        self.record(now, "revoke", session=session.id)

    def events(self) -> pd.DataFrame | None:
        if self.rows is None:
            return None
        df = pd.DataFrame(self.rows, columns=_ROW)
        df["strategy"] = self.strategy
        df["replication"] = self.replication
        for col in ("user", "tab", "session", "token", "basis"):
            df[col] = df[col].astype("Int64")
        return df.sort_values("t_s", kind="stable").reset_index(drop=True)[EVENT_COLUMNS]


def max_valid_per_session(tokens: list[Token], end_s: float) -> int:
    """The most access tokens of one session valid at one instant (a token is valid from its
    issue to its expiry; one expiring as another is issued does not overlap it)."""
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
