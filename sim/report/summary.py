"""The report's opening paragraph, written from the numbers.

Variants are ranked by what their users experience — failed requests, then forced logins —;
401s that a retry recovered, refresh load, duplicate tokens and added latency are reported
apart, as costs. Two variants are only called different when their 95% confidence intervals do
not overlap; otherwise the sentence says there is no detectable difference. Every claim carries
its numbers, formatted as the tables format them (mean ± 95% CI half-width).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sim.report import style
from sim.report.sweep import run_labels, varied_fields
from sim.results import RunResult

#: costs that do not fail a user: (column, what it is, unit written after the number)
COSTS = [
    ("expiry_failures", "401s on an expired token (each costs a refresh and a resend; "
                        "the request still succeeds unless counted as failed above)", ""),
    ("refresh_rate_per_s", "refresh load (renewal mints per second in the window)", "/s"),
    ("added_latency_ms_p99", "added latency p99", " ms"),
]


@dataclass(frozen=True)
class Estimate:
    """A mean and its 95% CI half-width (0 when the interval is missing or degenerate)."""

    mean: float
    ci: float

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci

    def overlaps(self, other: "Estimate") -> bool:
        return self.low <= other.high and other.low <= self.high

    def text(self, unit: str = "") -> str:
        """``232 ±71``: the number as the tables print it."""
        shown = self.ci > 1e-9 * max(1.0, abs(self.mean))
        return style.fmt(self.mean) + (f" ±{style.fmt(self.ci)}" if shown else "") + unit


def estimates(result: RunResult, column: str) -> dict[str, Estimate]:
    """Per variant with a value for ``column``: its mean and CI from the aggregated rows."""
    agg = result.aggregate
    if column not in agg:
        return {}
    ci = agg[f"{column}_ci95"] if f"{column}_ci95" in agg else pd.Series(np.nan, index=agg.index)
    out = {}
    for name, value in agg[column].items():
        value = float(value)
        if np.isnan(value):
            continue
        half = float(ci.get(name, np.nan))
        out[name] = Estimate(value, 0.0 if np.isnan(half) else abs(half))
    return out


def groups(values: dict[str, Estimate]) -> list[list[str]]:
    """Variants from lowest to highest mean, grouped: a variant joins the group before it when
    its interval overlaps the interval of that group's lowest member (no detectable difference)."""
    ordered = sorted(values, key=lambda n: values[n].mean)
    out: list[list[str]] = []
    for name in ordered:
        if out and values[name].overlaps(values[out[-1][0]]):
            out[-1].append(name)
        else:
            out.append([name])
    return out


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _listing(names: list[str], values: dict[str, Estimate], unit: str = "") -> str:
    return ", ".join(f"{n} {values[n].text(unit)}" for n in names)


def _same(names: list[str], values: dict[str, Estimate]) -> bool:
    return len({(values[n].mean, values[n].ci) for n in names}) == 1


def user_facing(result: RunResult) -> list[str]:
    """The ranking by what users experience, as a sentence with every variant's numbers."""
    ranked = ranking(result)
    if not ranked:
        return []
    failed = estimates(result, "failed_requests")
    logins = estimates(result, "forced_logins")

    def numbers(name: str) -> str:
        login = f", {logins[name].text()} forced logins" if name in logins else ""
        return f"{failed[name].text()} failed requests{login}"

    def group(names: list[str]) -> str:
        if len({numbers(n) for n in names}) == 1:
            return f"{_names(names)}: {numbers(names[0])}{' each' if len(names) > 1 else ''}"
        return ", ".join(f"{n} ({numbers(n)})" for n in names)

    if len(ranked) == 1:
        return [f"No detectable difference in what users experience (failed requests, forced logins; "
                f"95% CIs overlap): {group(ranked[0])}."]
    return ["Ranked by what users experience (failed requests, then forced logins; within a group the "
            "95% CIs overlap, so there is no detectable difference): "
            + "; ".join(f"{i}. {group(g)}" for i, g in enumerate(ranked, 1)) + "."]


def ranking(result: RunResult) -> list[list[str]]:
    """Variants best first by what users experience: grouped by failed requests (no detectable
    difference within a group), each group split again by forced logins."""
    failed = estimates(result, "failed_requests")
    logins = estimates(result, "forced_logins")
    names = [n for n in result.aggregate.index if n in failed]
    if not names:
        return []
    out: list[list[str]] = []
    for group in groups({n: failed[n] for n in names}):
        sub = {n: logins[n] for n in group if n in logins}
        out.extend(groups(sub) if len(sub) == len(group) else [group])
    return out


def costs(result: RunResult) -> list[str]:
    """Sentences on what the variants cost without failing a user, lowest first."""
    sentences = []
    for column, what, unit in COSTS:
        values = estimates(result, column)
        if not values:
            continue
        parts = groups(values)
        text = "; then ".join(
            _listing(g, values, unit) + (" (no detectable difference)" if len(g) > 1 and not _same(g, values) else "")
            for g in parts)
        sentences.append(f"Cost, {what}: lowest first, {text}.")
    dup = estimates(result, "duplicate_tokens")
    per_1k = estimates(result, "duplicate_per_1k_refresh")
    some = [n for n in dup if dup[n].mean > 0]
    if dup and not some:
        sentences.append("No variant minted duplicate tokens.")
    elif some:
        # a duplicate access token from a rotating server brings its own refresh token: two signatures
        per_refresh = {n: result.scenario.variant(n).server.mints_per_refresh() for n in some}
        listing = "; ".join(
            f"{n} {per_1k[n].text() if n in per_1k else 'n/a'} per 1k refreshes ({dup[n].text()} duplicates, "
            f"{style.fmt(dup[n].mean * per_refresh[n])} extra sign operations)"
            for n in sorted(some, key=lambda n: -dup[n].mean))
        none = [n for n in dup if dup[n].mean == 0]
        sentences.append(f"Cost, duplicate tokens: {listing}" + (f"; none for {_names(none)}." if none else "."))
    return sentences


def summary(results: list[RunResult]) -> str:
    """One paragraph of plain text summarising one run, or a sweep of several."""
    if len(results) == 1:
        return _single(results[0])
    return _sweep(results)


def _provenance(result: RunResult) -> str:
    run = result.scenario.run
    divisor, unit = style.time_unit(run.duration_s)
    reps = result.replications["replication"].nunique() if len(result.replications) else 0
    how = "Measured (load test)" if result.kind == "measured" else "Simulated"
    text = (f"{how}: {result.scenario.population.users:,} users, a {run.duration_s / divisor:g} {unit} "
            f"measurement window, mean of {reps} replication{'s' if reps != 1 else ''}"
            + (" ± 95% CI." if reps > 1 else " (no confidence intervals: differences are not tested)."))
    if result.partial:
        text += " Partial run: it stopped early, so these numbers cover only part of what was planned."
    return text


def lapses(result: RunResult) -> list[str]:
    """When devices remember their tokens between visits: the logins a lapsed credential (refresh
    token or sliding token) forced, per user-day, fewest first (grouped where the 95% CIs overlap)."""
    if result.scenario is None or not result.scenario.population.remember_me:
        return []
    values = estimates(result, "lapse_logins_per_user_day")
    if not values:
        return []
    text = "; then ".join(
        _listing(g, values, "") + (" (no detectable difference)" if len(g) > 1 and not _same(g, values) else "")
        for g in groups(values))
    return [f"Logins forced by a lapsed credential, per user-day (a refresh token past its absolute or idle "
            f"lifetime, or a sliding token that expired while the user was away): fewest first, {text}."]


def _single(result: RunResult) -> str:
    return " ".join([_provenance(result), *user_facing(result), *lapses(result), *costs(result)])


def _sweep(results: list[RunResult]) -> str:
    varied = varied_fields(results)
    labels = run_labels(results)
    if varied:
        what = "; ".join(f"{k} ({', '.join(str(v) for v in values)})" for k, values in varied.items())
        sentences = [f"{len(results)} runs that differ in {what}."]
    else:
        sentences = [f"{len(results)} runs of the same scenario ({', '.join(labels)})."]
    if any(r.kind == "measured" for r in results) or any(r.partial for r in results):
        sentences.append(f"This set {style.run_tag(results)}.")
    best = []
    for result, label in zip(results, labels):
        ranked = ranking(result)
        if ranked:
            failed = estimates(result, "failed_requests")
            logins = estimates(result, "forced_logins")
            top = ranked[0]
            login_text = logins[top[0]].text() if top[0] in logins else "n/a"
            best.append(f"{label}: {_names(top)} ({failed[top[0]].text()} failed requests, "
                        f"{login_text} forced logins)")
    if best:
        sentences.append("Fewest failed requests, then forced logins, per run: " + "; ".join(best) + ".")
    ranges: dict[str, list[float]] = {}
    for result in results:
        for name, value in estimates(result, "duplicate_per_1k_refresh").items():
            ranges.setdefault(name, []).append(value.mean)
    dup = [f"{n} {style.fmt(min(v))}–{style.fmt(max(v))}" if min(v) != max(v) else f"{n} {style.fmt(v[0])}"
           for n, v in ranges.items() if max(v) > 0]
    sentences.append("Duplicate tokens per 1k refreshes: " + "; ".join(dup) + "." if dup
                     else "No variant minted duplicate tokens in any run.")
    return " ".join(s for s in sentences if s)
