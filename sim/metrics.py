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
  ``unavailable`` | ``lost``: its answer reaches the client;
- ``mint``, ``<kind>_<cause>`` with kind ``access`` | ``refresh`` and cause ``login`` | ``refresh``
  | ``grace`` | ``reissue``, suffixed ``_duplicate`` for a duplicate access token;
- ``reuse_detected``, ``grace_reuse``, ``revoke``: from the server's ledger;
- ``resent_pair``: a refresh answered with tokens already issued (neither a mint nor a duplicate);
- ``login``, ``visit`` | ``forced``: a user starts a login (``forced`` when the session was lost);
- ``logout``, ``""``: a user leaves.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = [
    "strategy", "replication", "users", "window_s", "requests", "attempts", "refresh_calls",
    "access_mints", "refresh_mints", "sign_ops", "verify_ops", "refresh_rate_per_s",
    "refresh_rate_peak_per_s", "duplicate_tokens", "duplicate_per_1k_refresh", "reuse_detections",
    "grace_reuses", "resent_pairs", "expired_refreshes", "expiry_failures", "failed_requests", "forced_logins", "added_latency_ms_p50",
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
LATENCY_BINS_MS = np.concatenate([[0.0], np.logspace(-1, 8, 9 * 20 + 1)])

# the outcome groups the summary counts; see docs/metrics.md for the vocabulary
ACCESS_RENEWALS = ("access_refresh", "access_grace", "access_reissue")
DUPLICATE_RENEWALS = tuple(f"{o}_duplicate" for o in ACCESS_RENEWALS)
ACCESS_MINTS = ("access_login", *ACCESS_RENEWALS, *DUPLICATE_RENEWALS)
REFRESH_MINTS = ("refresh_login", "refresh_refresh", "refresh_grace")
ATTEMPT_OUTCOMES = ("ok", "expired", "invalid", "lost")


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
        self._t = max(self._t, now)
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
    active_users_delta: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    auth_busy_s: np.ndarray | None = None
    auth_queue_s: np.ndarray | None = None
    valid_tokens_per_session_max: float = float("nan")

    def count(self, event: str, outcome: str, t_s: float) -> None:
        self.times[(event, outcome)].append(t_s)

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> "Tally":
        """Build a tally from an events table (EVENT_COLUMNS) of one variant and replication."""
        tally = cls()
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
    tally: Tally,
    *,
    strategy: str,
    replication: int,
    users: int,
    warmup_s: float,
    duration_s: float,
    workers: int | None,
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One row of ``summary``, the ``timeseries`` rows and the latency histogram of one run."""
    lo, hi = warmup_s, warmup_s + duration_s
    n_bins = int(np.ceil(hi))

    def times(event, *outcomes):
        arrays = [_arr(tally.times[(event, o)]) for o in outcomes if (event, o) in tally.times]
        return np.concatenate(arrays) if arrays else np.zeros(0)

    def n(t):
        return int(_in(t, lo, hi).sum())

    def per_second(t):
        return np.bincount(np.clip(t.astype(np.int64), 0, n_bins - 1), minlength=n_bins) if len(t) else np.zeros(n_bins, int)

    req_t, req_ms = _arr(tally.request_t_s), _arr(tally.request_added_ms)
    in_window, failed = _in(req_t, lo, hi), np.isnan(req_ms)
    ok_ms = req_ms[in_window & ~failed]
    hist = np.histogram(ok_ms, bins=np.append(LATENCY_BINS_MS, np.inf))[0]
    access, dup = times("mint", *ACCESS_MINTS), times("mint", *DUPLICATE_RENEWALS)
    renewals = times("mint", *ACCESS_RENEWALS, *DUPLICATE_RENEWALS)
    refresh_mints, attempts = n(times("mint", *REFRESH_MINTS)), n(times("attempt", *ATTEMPT_OUTCOMES))
    refresh_calls, expired, forced = times("refresh_start", ""), times("attempt", "expired"), times("login", "forced")
    renewal_bins = per_second(renewals)[int(lo):n_bins]
    renewals_in, duplicates = n(renewals), n(dup)
    qw_t, qw_ms = _arr(tally.queue_wait_t_s), _arr(tally.queue_wait_ms)
    ex_t, ex_s = _arr(tally.exposure_t_s), _arr(tally.exposure_s)
    left = _in(ex_t, lo, hi)
    busy = tally.auth_busy_s
    row = {
        "strategy": strategy,
        "replication": replication,
        "users": users,
        "window_s": duration_s,
        "requests": int(in_window.sum()),
        "attempts": attempts,
        "refresh_calls": n(refresh_calls),
        "access_mints": n(access),
        "refresh_mints": refresh_mints,
        "sign_ops": n(access) + refresh_mints,
        "verify_ops": attempts + n(refresh_calls),
        "refresh_rate_per_s": renewals_in / duration_s,
        "refresh_rate_peak_per_s": int(renewal_bins.max()) if len(renewal_bins) else 0,
        "duplicate_tokens": duplicates,
        "duplicate_per_1k_refresh": 1000 * duplicates / renewals_in if renewals_in else 0.0,
        "reuse_detections": n(times("reuse_detected", "")),
        "grace_reuses": n(times("grace_reuse", "")),
        "resent_pairs": n(times("resent_pair", "")),
        "expired_refreshes": n(times("refresh_end", "expired")),
        "expiry_failures": n(expired),
        "failed_requests": int((in_window & failed).sum()),
        "forced_logins": n(forced),
        "added_latency_ms_p50": _quantile(ok_ms, 0.50),
        "added_latency_ms_p95": _quantile(ok_ms, 0.95),
        "added_latency_ms_p99": _quantile(ok_ms, 0.99),
        "auth_utilization": (
            float(busy[int(lo):n_bins].sum() / (workers * duration_s)) if busy is not None and workers else np.nan
        ),
        "auth_queue_wait_ms_p99": _quantile(qw_ms[_in(qw_t, lo, hi)], 0.99),
        "exposure_s_mean": float(ex_s[left].mean()) if left.any() else np.nan,
        "valid_tokens_per_session_max": tally.valid_tokens_per_session_max,
    }
    active = np.zeros(n_bins, int)
    for second, delta in tally.active_users_delta.items():
        if second < n_bins:
            active[max(second, 0)] += delta
    series = pd.DataFrame({
        "t_s": np.arange(n_bins, dtype=float),
        "strategy": strategy,
        "replication": replication,
        "active_users": np.cumsum(active),
        "requests": per_second(req_t),
        "refresh_calls": per_second(refresh_calls),
        "access_mints": per_second(access),
        "duplicate_tokens": per_second(dup),
        "expiry_failures": per_second(expired),
        "failed_requests": per_second(req_t[failed]),
        "forced_logins": per_second(forced),
        "auth_busy_workers": _fit(tally.auth_busy_s, n_bins),
        "auth_queue_len": _fit(tally.auth_queue_s, n_bins),
    })[TIMESERIES_COLUMNS]
    latency = pd.DataFrame({
        "strategy": strategy, "replication": replication,
        "added_latency_ms": LATENCY_BINS_MS, "requests": hist,
    })
    latency = latency[latency["requests"] > 0].reset_index(drop=True)
    return row, series, latency


def _fit(values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    out = np.zeros(n)
    out[: min(n, len(values))] = values[:n]
    return out


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if len(values) else np.nan


def aggregate(per_replication: pd.DataFrame) -> pd.DataFrame:
    """Aggregated rows: per strategy, the mean of every metric over replications and its 95%
    confidence half-width (Student's t) in ``<metric>_ci95``; ``replication`` is ``"mean"``."""
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
    per = per_replication[SUMMARY_COLUMNS].copy()
    per["replication"] = per["replication"].astype(str)
    agg = aggregate(per_replication)
    columns = SUMMARY_COLUMNS + [f"{c}_ci95" for c in METRIC_COLUMNS]
    return pd.concat([per, agg], ignore_index=True).reindex(columns=columns)


def latency_quantile(histogram: pd.DataFrame, q: float) -> float:
    """A quantile of added latency read off a histogram (lower bin edges)."""
    if histogram.empty:
        return np.nan
    h = histogram.sort_values("added_latency_ms")
    cum = h["requests"].cumsum() / h["requests"].sum()
    return float(h["added_latency_ms"].to_numpy()[np.searchsorted(cum.to_numpy(), q)])
