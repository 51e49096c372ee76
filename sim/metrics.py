"""Records -> the tables of METRICS.md (``docs/metrics.md``): ``summary``, ``timeseries`` and the
added-latency histogram behind the percentiles.

Both halves feed this module: the simulator hands it a :class:`Tally` it filled while running,
a load test builds one from its measured records with :meth:`Tally.from_events`.

The record vocabulary, ``(event, outcome)`` (times ``t_s`` are seconds from the start of the run,
in scenario time):

- ``request``, ``ok`` | ``failed``: one per request, at its issue time; ``latency_ms`` is the
  added latency (NaN when it failed);
- ``attempt``, ``ok`` | ``expired`` | ``invalid`` | ``lost``: one per HTTP send to the API, at
  send time, with the API's verdict (``lost``: no answer before the timeout);
- ``refresh_start``, ``""``: the client sends a refresh call (``token`` = refresh token,
  ``basis``); ``refresh_end``, ``ok`` | ``expired`` | ``revoked`` | ``reuse_detected`` |
  ``unauthenticated`` | ``unavailable`` | ``lost``: its answer reaches the client;
- ``mint``, ``<kind>_<cause>`` with kind ``access`` | ``refresh`` and cause ``login`` | ``refresh``
  | ``grace`` | ``reissue``, suffixed ``_duplicate`` for a duplicate access token;
- ``reuse_detected``, ``grace_reuse``, ``revoke``: from the server's ledger; ``displaced``, ``""``:
  (the server's ledger) a session row's write replaced the refresh token ``token`` with a
  concurrent rotation's, so the server no longer honours it;
- ``resent_pair``: a refresh answered with tokens already issued (neither a mint nor a duplicate);
- ``login``, ``visit`` | ``forced`` | ``lapsed``: a user starts a login (``lapsed`` when the
  server let the credential expire — a refresh token past its lifetime, a sliding token the API
  answered as expired —, ``forced`` when the session was otherwise lost in use; both count as
  forced logins);
- ``backoff``, ``""``: a refresh the auth tier answered 503 will be sent again, after the wait
  (``latency_ms``) its ``Retry-After`` and the client's jitter make;
- ``logout``, ``""``: a user leaves;
- ``stranded``, ``""``: the client let go of a refresh token it had never presented (``token``):
  its jar discarded or overwrote an answer, or a failure path deleted it;
- derived from the rows above by :class:`Divergence` (the simulator as it runs, a load test
  from its events table): ``spurious_logout``, ``race_logout`` (``latency_ms``: milliseconds
  since the session's first refresh race), ``stranded_token``, ``benign_revocation``.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

SUMMARY_COLUMNS = [
    "strategy", "replication", "users", "window_s", "requests", "attempts", "refresh_calls",
    "access_mints", "refresh_mints", "sign_ops", "verify_ops", "refresh_rate_per_s",
    "refresh_rate_peak_per_s", "duplicate_tokens", "duplicate_per_1k_refresh", "reuse_detections",
    "grace_reuses", "resent_pairs", "expired_refreshes", "unavailable_refreshes", "retried_refreshes",
    "expiry_failures", "failed_requests", "forced_logins",
    "spurious_logouts", "stranded_tokens", "race_to_logout_s_mean", "benign_revocations",
    "lapse_logins_per_user_day", "added_latency_ms_p50",
    "added_latency_ms_p95", "added_latency_ms_p99", "auth_utilization", "auth_queue_wait_ms_p99",
    "exposure_s_mean", "valid_tokens_per_session_max",
]
#: columns that get a ``<metric>_ci95`` partner in aggregated rows
METRIC_COLUMNS = SUMMARY_COLUMNS[4:]
TIMESERIES_COLUMNS = [
    "t_s", "strategy", "replication", "active_users", "requests", "refresh_calls", "access_mints",
    "duplicate_tokens", "expiry_failures", "failed_requests", "forced_logins", "auth_busy_workers",
    "auth_queue_len",
]
EVENT_COLUMNS = [
    "t_s", "strategy", "replication", "user", "tab", "session", "event", "token", "basis", "outcome",
    "latency_ms",
]
LATENCY_COLUMNS = ["strategy", "replication", "added_latency_ms", "requests"]

#: lower edges of the added-latency histogram bins: 0, then log-spaced from 0.1 ms to ~28 h
#: (the coarse bins of earlier run folders; percentiles now come from :class:`LogSketch`)
LATENCY_BINS_MS = np.concatenate([[0.0], np.logspace(-1, 8, 9 * 20 + 1)])
#: relative error bound of every percentile the simulator reports without per-request records
SKETCH_RELATIVE_ERROR = 0.005

# the outcome groups the summary counts; see docs/metrics.md for the vocabulary
ACCESS_RENEWALS = ("access_refresh", "access_grace", "access_reissue")
DUPLICATE_RENEWALS = tuple(f"{o}_duplicate" for o in ACCESS_RENEWALS)
ACCESS_MINTS = ("access_login", *ACCESS_RENEWALS, *DUPLICATE_RENEWALS)
REFRESH_MINTS = ("refresh_login", "refresh_refresh", "refresh_grace")
ATTEMPT_OUTCOMES = ("ok", "expired", "invalid", "lost")


class LogSketch:
    """A mergeable quantile sketch with a relative-error guarantee (DDSketch's log buckets).

    A positive value ``x`` goes to bucket ``ceil(log(x) / log(gamma))`` with
    ``gamma = (1 + a) / (1 - a)``; the bucket's representative ``2 gamma^i / (gamma + 1)`` is
    within a relative ``a`` (:data:`SKETCH_RELATIVE_ERROR`) of every value in it. Values at or
    below ``zero_ms`` count as 0. :meth:`quantile` returns the value of rank
    ``floor(q (n - 1))`` (the ``lower`` sample quantile) within that bound; the same rule read off
    :meth:`table` (``latency.parquet``) gives the same number, so every table and chart agrees.
    """

    __slots__ = ("buckets", "zeros", "n", "_log_gamma", "_gamma", "zero_ms")

    def __init__(self, relative_error: float = SKETCH_RELATIVE_ERROR, zero_ms: float = 1e-6) -> None:
        self._gamma = (1 + relative_error) / (1 - relative_error)
        self._log_gamma = math.log(self._gamma)
        self.buckets: Counter[int] = Counter()
        self.zeros = 0
        self.n = 0
        self.zero_ms = zero_ms

    def add(self, x: float, count: int = 1) -> None:
        self.n += count
        if x <= self.zero_ms:
            self.zeros += count
        else:
            self.buckets[math.ceil(math.log(x) / self._log_gamma)] += count

    def add_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, float)
        values = values[~np.isnan(values)]
        zero = values <= self.zero_ms
        self.zeros += int(zero.sum())
        self.n += len(values)
        keys, counts = np.unique(np.ceil(np.log(values[~zero]) / self._log_gamma).astype(np.int64), return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist()):
            self.buckets[k] += c

    def merge(self, other: "LogSketch") -> None:
        self.n += other.n
        self.zeros += other.zeros
        self.buckets.update(other.buckets)

    def value(self, key: int) -> float:
        return 2 * self._gamma ** key / (self._gamma + 1)

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(representative values, counts), ascending, zeros first."""
        keys = sorted(self.buckets)
        values = [0.0] * bool(self.zeros) + [self.value(k) for k in keys]
        counts = [self.zeros] * bool(self.zeros) + [self.buckets[k] for k in keys]
        return np.asarray(values, float), np.asarray(counts, np.int64)

    def quantile(self, q: float) -> float:
        if not self.n:
            return np.nan
        return table_quantile(*self.table(), q)


def table_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The value of rank ``floor(q (n - 1))`` in a table of (ascending value, count)."""
    n = int(counts.sum())
    if not n:
        return np.nan
    rank = math.floor(q * (n - 1))
    return float(values[int(np.searchsorted(np.cumsum(counts), rank, side="right"))])


def exact_quantile(values: np.ndarray, q: float) -> float:
    """The sample quantile of rank ``floor(q (n - 1))`` (numpy's ``lower`` method)."""
    return float(np.quantile(values, q, method="lower")) if len(values) else np.nan


#: the rows :class:`Divergence` reads
WATCHED_EVENTS = frozenset({"refresh_start", "refresh_end", "reuse_detected", "revoke", "login", "stranded",
                            "displaced"})
#: the rows :class:`Divergence` derives
DIVERGENCE_EVENTS = ("spurious_logout", "race_logout", "stranded_token", "benign_revocation")


class Divergence:
    """Where the client's and the server's views of a session drift apart, read off the records
    in time order (the same rule for a simulated run and a load test):

    - a *race*: a refresh call presenting a refresh token that an earlier call of the session
      already presented (``refresh_start`` rows with the same token);
    - a *spurious logout*: a forced login (``login``/``forced``; a ``lapsed`` one — the server
      let the refresh or sliding token expire — is legitimate) that leaves a session the server had not revoked (no ``revoke`` row
      before it): the session's family was still valid — the user was logged out by the client;
    - a *benign revocation*: a session revoked at the instant a reuse of one of its tokens was
      detected, the token having been presented by the user's own client (every client of a
      simulation or a load test is the user's own: no thief);
    - a *stranded token*: a ``stranded`` row (a refresh token the client let go of unpresented)
      of a session not revoked then, the server still honouring the token (no ``displaced`` row
      for it before): a valid refresh token no client holds.

    - a *race logout*: a forced login (spurious or not) leaving a session that had a race; its
      value is the seconds from *the race behind it* to it: the session's latest race when the
      token raced was granted to one of its presentations (the race itself refused the other:
      a logout at the race), else the race before that one — the latest race then presented a
      token the server had already let go of (a stranded jar presented at the next renewal),
      which the race before it left the client holding: a logout one renewal later.

    :meth:`feed` takes one row and returns the derived rows ``(event, value)`` (``value`` NaN
    but for ``race_logout``)."""

    __slots__ = ("presented", "granted", "races", "revoked", "reuse_at", "logged_out", "displaced")

    def __init__(self) -> None:
        # (session, token) pairs, not a set per session: most sessions hold one or two tokens,
        # and an empty set alone is 216 bytes (a million users have a session each)
        self.presented: set = set()
        self.granted: set = set()  # refresh tokens a refresh call of the session got ok for
        self.races: dict = {}  # the session's latest two races: ((t_s, token), (t_s, token) | None)
        self.revoked: set = set()
        self.reuse_at: dict = {}
        self.logged_out: set = set()
        self.displaced: set = set()  # refresh tokens the server no longer honours, never presented

    def feed(self, t_s: float, event: str, outcome: str, session, token) -> tuple:
        if event == "refresh_start":
            key = (session, token)
            if key in self.presented:
                latest = self.races.get(session)
                if latest is None or latest[0][1] != token:
                    self.races[session] = ((t_s, token), latest[0] if latest is not None else None)
            else:
                self.presented.add(key)
        elif event == "refresh_end":
            if outcome == "ok":
                self.granted.add((session, token))
        elif event == "reuse_detected":
            self.reuse_at[session] = t_s
        elif event == "revoke":
            if session not in self.revoked:
                self.revoked.add(session)
                if self.reuse_at.get(session) == t_s:
                    return (("benign_revocation", math.nan),)
        elif event == "login" and outcome == "forced" and session is not None and session not in self.logged_out:
            self.logged_out.add(session)
            out = () if session in self.revoked else (("spurious_logout", math.nan),)
            races = self.races.get(session)
            if races is None:
                return out
            (t_race, raced), before = races
            if (session, raced) not in self.granted and before is not None:
                t_race = before[0]
            return out + (("race_logout", t_s - t_race),)
        elif event == "displaced":
            self.displaced.add(token)
        elif event == "stranded" and session not in self.revoked and token not in self.displaced:
            return (("stranded_token", math.nan),)
        return ()

    def forget(self, tokens) -> None:
        """Drop ``(session, token)`` refresh tokens that will never be presented or let go of
        again: a later ``refresh_start`` or ``stranded`` row cannot name them, and a forced login
        only asks whether its session's latest race token was granted (kept)."""
        presented, granted, races = self.presented, self.granted, self.races
        for session, token in tokens:
            self.displaced.discard(token)  # no later ``stranded`` row can name it
            key = (session, token)
            presented.discard(key)
            if key in granted:
                latest = races.get(session)
                if latest is None or latest[0][1] != token:
                    granted.discard(key)

    def forget_sessions(self, sessions) -> None:
        """Drop everything of ``sessions``, which no later row can name."""
        if not sessions:
            return
        gone = set(sessions)
        for name in ("presented", "granted"):
            setattr(self, name, {key for key in getattr(self, name) if key[0] not in gone})
        for name in ("races", "reuse_at"):
            setattr(self, name, {s: v for s, v in getattr(self, name).items() if s not in gone})
        self.revoked -= gone
        self.logged_out -= gone

    @classmethod
    def rows(cls, events: pd.DataFrame) -> pd.DataFrame:
        """The derived rows of an events table (EVENT_COLUMNS, sorted by time), as events rows
        (``latency_ms`` of a ``race_logout``: the race-to-logout time in milliseconds)."""
        import pandas as pd

        tracker, out = cls(), []
        relevant = events[events["event"].isin(WATCHED_EVENTS)]
        for row in relevant.itertuples(index=False):
            session = None if pd.isna(row.session) else row.session
            for event, value in tracker.feed(row.t_s, row.event, row.outcome, session, row.token):
                out.append({**row._asdict(), "event": event, "outcome": "", "token": row.token if event == "stranded_token" else pd.NA,
                            "basis": pd.NA, "latency_ms": value * 1000.0})
        return pd.DataFrame(out, columns=events.columns) if out else events.iloc[0:0]


class Counts:
    """What a run of one variant produced, counted as it happens: per (event, outcome), counts
    per one-second bin and inside the measurement window ``[warmup, warmup + duration)``;
    added latency and auth-queue waits in :class:`LogSketch` es (and, with ``keep_values``, as
    exact values too). Memory grows with the run's length, not with its number of requests."""

    def __init__(self, warmup_s: float, duration_s: float, keep_values: bool = False,
                 window_from_bins: bool = False) -> None:
        self.lo, self.hi = warmup_s, warmup_s + duration_s
        self.n_bins = max(int(math.ceil(self.hi)), 1)
        self.bins: dict[tuple[str, str], array] = {}
        self.window: Counter[tuple[str, str]] = Counter()
        # with a window of whole seconds, what fell in it is the sum of its bins: counting it
        # apart on every record (the simulator's busiest line) is then left to :meth:`settle`
        self._from_bins = window_from_bins and self.lo == int(self.lo) and self.hi == int(self.hi)
        self._settled = not self._from_bins
        self.latency = LogSketch()
        self.queue_wait = LogSketch()
        self.latency_values: array | None = array("d") if keep_values else None
        self.queue_wait_values: array | None = array("d") if keep_values else None
        self.exposure_sum_s = 0.0
        self.exposure_n = 0
        self.race_sum_s = 0.0
        self.race_n = 0
        self.active_delta = array("q", bytes(8 * self.n_bins))
        self.auth_busy_s: np.ndarray | None = None
        self.auth_queue_s: np.ndarray | None = None
        self.valid_tokens_per_session_max: float = float("nan")

    def _bin(self, key) -> array:
        b = self.bins.get(key)
        if b is None:
            b = self.bins[key] = array("q", bytes(8 * self.n_bins))
        return b

    def count(self, event: str, outcome: str, t_s: float, n: int = 1) -> None:
        key = (event, outcome)
        b = self.bins.get(key)
        if b is None:
            b = self._bin(key)
        i = int(t_s)
        if self._from_bins and t_s >= 0 and i < self.n_bins:
            b[i] += n
            return
        b[0 if i < 0 else (i if i < self.n_bins else self.n_bins - 1)] += n
        if self._from_bins:
            # a time outside the bins went to the first or last one: keep the window right
            clamped = min(max(i, 0), self.n_bins - 1)
            self.window[key] += n * ((self.lo <= t_s < self.hi) - (self.lo <= clamped < self.hi))
        elif self.lo <= t_s < self.hi:
            window = self.window
            window[key] = window.get(key, 0) + n

    def bins_of(self, event: str, outcome: str) -> array | None:
        """The per-second bins of (event, outcome), for a caller that adds counts of times
        ``0 <= t_s < hi`` straight into them; None when the window must be counted apart (then
        use :meth:`count`)."""
        return self._bin((event, outcome)) if self._from_bins and self.latency_values is None else None

    def settle(self) -> None:
        """Complete :attr:`window` (the counts inside the measurement window) before reading it."""
        if self._settled:
            return
        lo, hi = int(self.lo), int(self.hi)
        for key, b in self.bins.items():
            self.window[key] += int(np.frombuffer(b, dtype=np.int64)[lo:hi].sum())
        self._settled = True

    def requests_without_delay(self, t_s: float, n: int) -> None:
        """``n`` requests issued at ``t_s`` that succeeded with no added latency."""
        self.count("request", "ok", t_s, n)
        if self.lo <= t_s < self.hi:
            self.latency.add(0.0, n)
            if self.latency_values is not None:
                self.latency_values.extend([0.0] * n)

    def request(self, t_s: float, added_ms: float | None) -> None:
        """A request issued at ``t_s``; ``added_ms`` None when it failed."""
        if added_ms is None:
            self.count("request", "failed", t_s)
            return
        self.count("request", "ok", t_s)
        if self.lo <= t_s < self.hi:
            latency = self.latency
            if added_ms <= latency.zero_ms:
                latency.n += 1
                latency.zeros += 1
            else:
                latency.add(added_ms)
            if self.latency_values is not None:
                self.latency_values.append(added_ms)

    def queue_waited(self, t_s: float, wait_ms: float) -> None:
        if self.lo <= t_s < self.hi:
            self.queue_wait.add(wait_ms)
            if self.queue_wait_values is not None:
                self.queue_wait_values.append(wait_ms)

    def exposure(self, t_s: float, exposure_s: float) -> None:
        if self.lo <= t_s < self.hi:
            self.exposure_sum_s += exposure_s
            self.exposure_n += 1

    def race_to_logout(self, t_s: float, seconds: float) -> None:
        """A logout at ``t_s`` came ``seconds`` after its session's first refresh race."""
        if self.lo <= t_s < self.hi:
            self.race_sum_s += seconds
            self.race_n += 1

    def active(self, t_s: float, delta: int) -> None:
        i = int(t_s)
        if 0 <= i < self.n_bins:
            self.active_delta[i] += delta
        elif i < 0:
            self.active_delta[0] += delta

    def merge(self, other: "Counts") -> None:
        """Add the counts of ``other`` (the same window; another part of the population, e.g.
        the users of another auth-tier instance): counts, bins and time integrals add up,
        sketches merge, kept values join, the per-session maximum is the larger."""
        if (other.lo, other.hi) != (self.lo, self.hi):
            raise ValueError("the counts were taken for another window")
        for key, b in other.bins.items():
            np.frombuffer(self._bin(key), dtype=np.int64)[:] += np.frombuffer(b, dtype=np.int64)
        self.window.update(other.window)
        self.latency.merge(other.latency)
        self.queue_wait.merge(other.queue_wait)
        for mine, theirs in ((self.latency_values, other.latency_values),
                             (self.queue_wait_values, other.queue_wait_values)):
            if mine is not None and theirs is not None:
                mine.extend(theirs)
        self.exposure_sum_s += other.exposure_sum_s
        self.exposure_n += other.exposure_n
        np.frombuffer(self.active_delta, dtype=np.int64)[:] += np.frombuffer(other.active_delta, dtype=np.int64)
        for name in ("auth_busy_s", "auth_queue_s"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, _fit(mine, self.n_bins) + _fit(theirs, self.n_bins) if mine is not None
                        else _fit(theirs, self.n_bins))
        values = [v for v in (self.valid_tokens_per_session_max, other.valid_tokens_per_session_max) if v == v]
        self.valid_tokens_per_session_max = max(values) if values else float("nan")

    @classmethod
    def from_tally(cls, tally: "Tally", warmup_s: float, duration_s: float) -> "Counts":
        """The counts of a :class:`Tally` (records of a load test), with exact percentiles."""
        counts = cls(warmup_s, duration_s, keep_values=True)
        n = counts.n_bins
        for key, times in tally.times.items():
            t = _arr(times)
            if not len(t):
                continue
            counts.bins[key] = array("q", np.bincount(np.clip(t.astype(np.int64), 0, n - 1), minlength=n).astype(np.int64).tobytes())
            counts.window[key] = int(_in(t, counts.lo, counts.hi).sum())
        req_t, req_ms = _arr(tally.request_t_s), _arr(tally.request_added_ms)
        failed = np.isnan(req_ms)
        for outcome, mask in (("ok", ~failed), ("failed", failed)):
            t = req_t[mask]
            counts.bins[("request", outcome)] = array("q", np.bincount(np.clip(t.astype(np.int64), 0, n - 1), minlength=n).astype(np.int64).tobytes())
            counts.window[("request", outcome)] = int(_in(t, counts.lo, counts.hi).sum())
        ok_ms = req_ms[_in(req_t, counts.lo, counts.hi) & ~failed]
        counts.latency.add_many(ok_ms)
        counts.latency_values.extend(ok_ms)
        qw_t, qw_ms = _arr(tally.queue_wait_t_s), _arr(tally.queue_wait_ms)
        waits = qw_ms[_in(qw_t, counts.lo, counts.hi)]
        counts.queue_wait.add_many(waits)
        counts.queue_wait_values.extend(waits)
        ex_t, ex_s = _arr(tally.exposure_t_s), _arr(tally.exposure_s)
        left = _in(ex_t, counts.lo, counts.hi)
        counts.exposure_sum_s, counts.exposure_n = float(ex_s[left].sum()), int(left.sum())
        rt, rs = _arr(tally.race_t_s), _arr(tally.race_s)
        inside = _in(rt, counts.lo, counts.hi)
        counts.race_sum_s, counts.race_n = float(rs[inside].sum()), int(inside.sum())
        for second, delta in tally.active_users_delta.items():
            counts.active(second, delta)
        counts.auth_busy_s, counts.auth_queue_s = tally.auth_busy_s, tally.auth_queue_s
        counts.valid_tokens_per_session_max = tally.valid_tokens_per_session_max
        return counts


class Level:
    """A level that changes at instants (busy workers, calls queued), integrated over time into
    one-second bins: ``bins[i]`` is the level's mean over second ``i``. Changes must come in time
    order; the bins grow as time goes on (a server has no known end)."""

    def __init__(self) -> None:
        self.bins: list[float] = []
        self.level = 0
        self._t = 0.0

    def add(self, delta: int, now: float) -> None:
        """The level changes by ``delta`` at ``now`` (seconds from the start)."""
        t = self._t
        while t < now and self.level:
            i = int(t)
            if i >= len(self.bins):
                self.bins.extend([0.0] * (i + 1 - len(self.bins)))
            edge = min(i + 1.0, now)
            self.bins[i] += self.level * (edge - t)
            t = edge
        if now > self._t:  # (what max() keeps)
            self._t = now
        self.level += delta


@dataclass
class Tally:
    """What a run of one variant produced, as times (seconds from the run's start) per
    (event, outcome), plus the few measurements that are not counts.

    ``auth_busy_s`` / ``auth_queue_s``: per one-second bin, worker-seconds busy and
    call-seconds queued (time integrals), or None where not measured.
    """

    times: dict[tuple[str, str], array] = field(default_factory=lambda: defaultdict(lambda: array("d")))
    #: per request: issue time, added latency (NaN when it failed)
    request_t_s: array = field(default_factory=lambda: array("d"))
    request_added_ms: array = field(default_factory=lambda: array("d"))
    queue_wait_t_s: array = field(default_factory=lambda: array("d"))
    queue_wait_ms: array = field(default_factory=lambda: array("d"))
    exposure_t_s: array = field(default_factory=lambda: array("d"))
    exposure_s: array = field(default_factory=lambda: array("d"))
    #: per logout after a refresh race: its time and the seconds since the race
    race_t_s: array = field(default_factory=lambda: array("d"))
    race_s: array = field(default_factory=lambda: array("d"))
    active_users_delta: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    auth_busy_s: np.ndarray | None = None
    auth_queue_s: np.ndarray | None = None
    valid_tokens_per_session_max: float = float("nan")

    def count(self, event: str, outcome: str, t_s: float) -> None:
        self.times[(event, outcome)].append(t_s)

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> "Tally":
        """Build a tally from an events table (EVENT_COLUMNS) of one variant and replication,
        sorted by time; the :class:`Divergence` rows are derived unless the table has them."""
        import pandas as pd

        tally = cls()
        if not events["event"].isin(DIVERGENCE_EVENTS).any():
            events = pd.concat([events, Divergence.rows(events)], ignore_index=True)
        races = events[events["event"] == "race_logout"]
        tally.race_t_s.extend(races["t_s"].to_numpy(float))
        tally.race_s.extend((races["latency_ms"] / 1000.0).to_numpy(float))
        for (event, outcome), group in events.groupby(["event", "outcome"], dropna=False, sort=False):
            key = (event, "" if pd.isna(outcome) else outcome)
            tally.times[key].extend(group["t_s"].to_numpy(float))
        requests = events[events["event"] == "request"]
        tally.request_t_s.extend(requests["t_s"].to_numpy(float))
        tally.request_added_ms.extend(requests["latency_ms"].to_numpy(float))
        return tally


def _in(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (t >= lo) & (t < hi)


def _arr(a) -> np.ndarray:
    return np.frombuffer(a, dtype=float) if len(a) else np.zeros(0)


def summarize(
    tally: "Tally | Counts",
    *,
    strategy: str,
    replication: int,
    users: int,
    warmup_s: float,
    duration_s: float,
    workers: int | None,
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One row of ``summary``, the ``timeseries`` rows and the latency histogram of one run.

    Percentiles are exact where per-request values were kept (records of a load test, a run
    with ``events``), else read off :class:`LogSketch` es within :data:`SKETCH_RELATIVE_ERROR`."""
    import pandas as pd

    counts = tally if isinstance(tally, Counts) else Counts.from_tally(tally, warmup_s, duration_s)
    if (counts.lo, counts.hi) != (warmup_s, warmup_s + duration_s):
        raise ValueError("the counts were taken for another window")
    counts.settle()
    lo, hi, n_bins = counts.lo, counts.hi, counts.n_bins
    zeros = np.zeros(n_bins, np.int64)

    def per_second(event, *outcomes):
        out = zeros.copy()
        for o in outcomes:
            b = counts.bins.get((event, o))
            if b is not None:
                out += np.frombuffer(b, dtype=np.int64)
        return out

    def n(event, *outcomes):
        return int(sum(counts.window[(event, o)] for o in outcomes))

    access, dup = ("mint", *ACCESS_MINTS), ("mint", *DUPLICATE_RENEWALS)
    renewals = ("mint", *ACCESS_RENEWALS, *DUPLICATE_RENEWALS)
    refresh_mints, attempts = n("mint", *REFRESH_MINTS), n("attempt", *ATTEMPT_OUTCOMES)
    renewal_bins = per_second(*renewals)[int(lo):n_bins]
    renewals_in, duplicates = n(*renewals), n(*dup)
    refresh_calls = n("refresh_start", "")
    busy = counts.auth_busy_s
    if counts.latency_values is not None:
        ok_ms = np.frombuffer(counts.latency_values, dtype=float) if len(counts.latency_values) else np.zeros(0)
        p = {q: exact_quantile(ok_ms, q) for q in (0.5, 0.95, 0.99)}
        waits = counts.queue_wait_values
        qw99 = exact_quantile(np.frombuffer(waits, dtype=float) if len(waits) else np.zeros(0), 0.99)
    else:
        p = {q: counts.latency.quantile(q) for q in (0.5, 0.95, 0.99)}
        qw99 = counts.queue_wait.quantile(0.99)
    row = {
        "strategy": strategy,
        "replication": replication,
        "users": users,
        "window_s": duration_s,
        "requests": n("request", "ok", "failed"),
        "attempts": attempts,
        "refresh_calls": refresh_calls,
        "access_mints": n(*access),
        "refresh_mints": refresh_mints,
        "sign_ops": n(*access) + refresh_mints,
        "verify_ops": attempts + refresh_calls,
        "refresh_rate_per_s": renewals_in / duration_s,
        "refresh_rate_peak_per_s": int(renewal_bins.max()) if len(renewal_bins) else 0,
        "duplicate_tokens": duplicates,
        "duplicate_per_1k_refresh": 1000 * duplicates / renewals_in if renewals_in else 0.0,
        "reuse_detections": n("reuse_detected", ""),
        "grace_reuses": n("grace_reuse", ""),
        "resent_pairs": n("resent_pair", ""),
        "expired_refreshes": n("refresh_end", "expired"),
        "unavailable_refreshes": n("refresh_end", "unavailable"),
        "retried_refreshes": n("backoff", ""),
        "expiry_failures": n("attempt", "expired"),
        "failed_requests": n("request", "failed"),
        "forced_logins": n("login", "forced", "lapsed"),
        "spurious_logouts": n("spurious_logout", ""),
        "stranded_tokens": n("stranded_token", ""),
        "race_to_logout_s_mean": counts.race_sum_s / counts.race_n if counts.race_n else np.nan,
        "benign_revocations": n("benign_revocation", ""),
        "lapse_logins_per_user_day": n("login", "lapsed") / (users * duration_s / 86400.0),
        "added_latency_ms_p50": p[0.5],
        "added_latency_ms_p95": p[0.95],
        "added_latency_ms_p99": p[0.99],
        "auth_utilization": (
            float(busy[int(lo):n_bins].sum() / (workers * duration_s)) if busy is not None and workers else np.nan
        ),
        "auth_queue_wait_ms_p99": qw99,
        "exposure_s_mean": counts.exposure_sum_s / counts.exposure_n if counts.exposure_n else np.nan,
        "valid_tokens_per_session_max": counts.valid_tokens_per_session_max,
    }
    series = pd.DataFrame({
        "t_s": np.arange(n_bins, dtype=float),
        "strategy": strategy,
        "replication": replication,
        "active_users": np.cumsum(np.frombuffer(counts.active_delta, dtype=np.int64)),
        "requests": per_second("request", "ok", "failed"),
        "refresh_calls": per_second("refresh_start", ""),
        "access_mints": per_second(*access),
        "duplicate_tokens": per_second(*dup),
        "expiry_failures": per_second("attempt", "expired"),
        "failed_requests": per_second("request", "failed"),
        "forced_logins": per_second("login", "forced", "lapsed"),
        "auth_busy_workers": _fit(counts.auth_busy_s, n_bins),
        "auth_queue_len": _fit(counts.auth_queue_s, n_bins),
    })[TIMESERIES_COLUMNS]
    values, hist = counts.latency.table()
    latency = pd.DataFrame({
        "strategy": strategy, "replication": replication,
        "added_latency_ms": values, "requests": hist,
    })
    return row, series, latency


def _fit(values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    out = np.zeros(n)
    out[: min(n, len(values))] = values[:n]
    return out


def aggregate(per_replication: pd.DataFrame) -> pd.DataFrame:
    """Aggregated rows: per strategy, the mean of every metric over replications and its 95%
    confidence half-width (Student's t) in ``<metric>_ci95``; ``replication`` is ``"mean"``."""
    import pandas as pd
    from scipy import stats  # 0.6 s to import: only when aggregating

    rows = []
    for strategy, group in per_replication.groupby("strategy", sort=False):
        row = {"strategy": strategy, "replication": "mean", "users": group["users"].iloc[0],
               "window_s": group["window_s"].iloc[0]}
        for col in METRIC_COLUMNS:
            values = group[col].astype(float).dropna()
            row[col] = values.mean() if len(values) else np.nan
            if len(values) > 1:
                row[f"{col}_ci95"] = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
            else:
                row[f"{col}_ci95"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(per_replication: pd.DataFrame) -> pd.DataFrame:
    """Per-replication rows followed by the aggregated rows, columns in METRICS.md order."""
    import pandas as pd

    per = per_replication[SUMMARY_COLUMNS].copy()
    per["replication"] = per["replication"].astype(str)
    agg = aggregate(per_replication)
    columns = SUMMARY_COLUMNS + [f"{c}_ci95" for c in METRIC_COLUMNS]
    return pd.concat([per, agg], ignore_index=True).reindex(columns=columns)


def latency_quantile(histogram: pd.DataFrame, q: float) -> float:
    """A quantile of added latency read off a latency table (``latency.parquet``: the
    :class:`LogSketch` buckets' representative values and counts): the value of rank
    ``floor(q (n - 1))``, within :data:`SKETCH_RELATIVE_ERROR` of the exact one."""
    if histogram.empty:
        return np.nan
    h = histogram.groupby("added_latency_ms", sort=True)["requests"].sum()
    return table_quantile(h.index.to_numpy(float), h.to_numpy(np.int64), q)
