"""The headline measures of a report: summary columns, some normalised to a rate, each with its
mean and 95% confidence half-width per variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from sim.results import RunResult


@dataclass(frozen=True)
class Measure:
    """One headline number: ``column`` of the aggregated summary times ``scale``, divided by
    ``per(row)`` when given (the CI half-width is divided by the same mean denominator)."""

    key: str
    label: str
    unit: str
    column: str
    per: Callable[[pd.Series], float] | None = None
    scale: float = 1.0

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})"

    def of(self, row: pd.Series) -> tuple[float, float]:
        """(mean, 95% CI half-width) of this measure for one aggregated summary row; NaN where
        the run lacks the number."""
        value = _num(row.get(self.column)) * self.scale
        ci = _num(row.get(f"{self.column}_ci95")) * self.scale
        if self.per is not None:
            denominator = self.per(row)
            if not denominator or np.isnan(denominator):
                return np.nan, np.nan
            value, ci = value / denominator, ci / denominator
        return value, ci


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _thousand_requests(row: pd.Series) -> float:
    return _num(row.get("requests")) / 1000


def _thousand_user_hours(row: pd.Series) -> float:
    return _num(row.get("users")) * _num(row.get("window_s")) / 3600 / 1000


REFRESH_RATE = Measure("refresh_rate", "Refresh rate", "mints/s", "refresh_rate_per_s")
DUPLICATES = Measure("duplicates", "Duplicate tokens", "per 1k refreshes", "duplicate_per_1k_refresh")
EXPIRY_FAILURES = Measure("expiry_failures", "Expiry failures", "401s per 1k requests", "expiry_failures",
                          _thousand_requests)
FORCED_LOGINS = Measure("forced_logins", "Forced logins", "per 1k user-hours", "forced_logins",
                        _thousand_user_hours)
LAPSE_LOGINS = Measure("lapse_logins", "Lapse-forced logins", "per user-day", "lapse_logins_per_user_day")
P99_LATENCY = Measure("p99_latency", "p99 added latency", "ms", "added_latency_ms_p99")
EXPOSURE = Measure("exposure", "Exposure window", "s", "exposure_s_mean")
AUTH_UTILIZATION = Measure("auth_utilization", "Auth utilisation", "% of worker time", "auth_utilization",
                           scale=100)
QUEUE_WAIT_P99 = Measure("queue_wait_p99", "p99 auth queue wait", "ms", "auth_queue_wait_ms_p99")

HEADLINE = [REFRESH_RATE, DUPLICATES, EXPIRY_FAILURES, FORCED_LOGINS, P99_LATENCY]
#: every measure by key, for ``measures=["refresh_rate", "queue_wait_p99"]`` in chart calls
#: across runs of a sweep, capacity matters too
SWEEP = HEADLINE + [AUTH_UTILIZATION, QUEUE_WAIT_P99]
MEASURES = {m.key: m for m in HEADLINE + [LAPSE_LOGINS, EXPOSURE, AUTH_UTILIZATION, QUEUE_WAIT_P99]}


def headline_of(result: RunResult) -> list[Measure]:
    """The headline measures of a run: :data:`HEADLINE`, and the logins forced by a lapsed
    refresh token when the scenario's devices remember their tokens between visits (without
    ``remember_me`` every visit logs in anew, so there is no lapse to count)."""
    scenario = result.scenario
    if scenario is not None and scenario.population.remember_me:
        return HEADLINE + [LAPSE_LOGINS]
    return HEADLINE


def resolve(measures: list[Measure | str]) -> list[Measure]:
    """Measures given as objects or keys of :data:`MEASURES`; ``KeyError`` lists the keys."""
    out = []
    for m in measures:
        if isinstance(m, str):
            if m not in MEASURES:
                raise KeyError(f"no measure {m!r}; expected one of: {', '.join(MEASURES)}")
            m = MEASURES[m]
        out.append(m)
    return out

#: what a user of the system experiences as a failure, summed in the report's summary
FAILURE_COLUMNS = ["expiry_failures", "failed_requests", "forced_logins"]


def measure_table(result: RunResult, measures: list[Measure | str] = HEADLINE) -> pd.DataFrame:
    """Per variant (index, scenario order): for each measure (object or key) its mean (column
    ``m.title``) and CI half-width (column ``m.title + " ci95"``)."""
    agg = result.aggregate
    columns: dict[str, list[float]] = {}
    for m in resolve(measures):
        pairs = [m.of(row) for _, row in agg.iterrows()]
        columns[m.title] = [v for v, _ in pairs]
        columns[f"{m.title} ci95"] = [c for _, c in pairs]
    return pd.DataFrame(columns, index=pd.Index(agg.index, name="variant"))
