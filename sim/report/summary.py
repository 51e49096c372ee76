"""The report's opening paragraph, written from the numbers: which variant renews least, which
fails least, and what duplicate tokens cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sim.report import style
from sim.report.measures import FAILURE_COLUMNS
from sim.report.sweep import run_labels, varied_fields
from sim.results import RunResult


@dataclass
class Facts:
    """What the summary states about one run; ``lowest_load`` and ``fewest_failures`` list every
    variant tied for the best value (empty when the run lacks the numbers)."""

    lowest_load: list[str]
    load: pd.Series
    fewest_failures: list[str]
    failures: pd.Series
    duplicates_per_1k: pd.Series
    duplicate_tokens: pd.Series
    extra_sign_ops: pd.Series


def facts(result: RunResult) -> Facts:
    """The numbers behind the summary of one run (aggregated rows, per variant)."""
    agg = result.aggregate
    load = agg["refresh_rate_per_s"].astype(float)
    parts = agg.reindex(columns=FAILURE_COLUMNS).astype(float)
    failures = parts.sum(axis=1, min_count=1)
    duplicates = agg["duplicate_tokens"].astype(float)
    # a duplicate access token from a rotating server brings its own refresh token: two signatures
    per_refresh = pd.Series({n: result.scenario.variant(n).server.mints_per_refresh() for n in agg.index})
    return Facts(
        lowest_load=_best(load), load=load,
        fewest_failures=_best(failures), failures=failures,
        duplicates_per_1k=agg["duplicate_per_1k_refresh"].astype(float),
        duplicate_tokens=duplicates, extra_sign_ops=duplicates * per_refresh,
    )


def _best(values: pd.Series) -> list[str]:
    values = values.dropna()
    if values.empty:
        return []
    return list(values.index[np.isclose(values.to_numpy(), values.min(), rtol=1e-9, atol=1e-12)])


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


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
            f"measurement window, mean of {reps} replication{'s' if reps != 1 else ''}.")
    if result.partial:
        text += " Partial run: it stopped early, so these numbers cover only part of what was planned."
    return text


def _single(result: RunResult) -> str:
    f = facts(result)
    sentences = [_provenance(result)]
    if f.lowest_load:
        worst = f.load.idxmax()
        sentence = (f"{_names(f.lowest_load)} {'has' if len(f.lowest_load) == 1 else 'share'} the lowest "
                    f"refresh load ({style.fmt(f.load[f.lowest_load[0]])} renewal mints/s")
        if len(f.load.dropna()) > 1 and worst not in f.lowest_load:
            sentence += f"; highest: {worst} at {style.fmt(f.load[worst])}/s"
        sentences.append(sentence + ").")
    if f.fewest_failures:
        best = f.fewest_failures[0]
        agg = result.aggregate
        detail = ", ".join(f"{style.fmt(agg.at[best, c])} {c.replace('_', ' ')}" for c in FAILURE_COLUMNS
                           if c in agg and not pd.isna(agg.at[best, c]))
        sentence = (f"{_names(f.fewest_failures)} {'has' if len(f.fewest_failures) == 1 else 'tie with'} the "
                    f"fewest failures: {style.fmt(f.failures[best])} in the window ({detail})")
        worst = f.failures.idxmax()
        if worst not in f.fewest_failures:
            sentence += f", against {style.fmt(f.failures[worst])} for {worst}"
        sentences.append(sentence + ".")
    sentences.append(_duplicates(f))
    return " ".join(s for s in sentences if s)


def _duplicates(f: Facts) -> str:
    dup = f.duplicate_tokens.dropna()
    if dup.empty:
        return ""
    some = dup[dup > 0]
    if some.empty:
        return "No variant minted duplicate tokens."
    costs = [f"{n} mints {style.fmt(f.duplicates_per_1k[n])} duplicate tokens per 1k refreshes "
             f"({style.fmt(f.duplicate_tokens[n])} duplicates, {style.fmt(f.extra_sign_ops[n])} extra sign operations "
             f"in the window)" for n in some.sort_values(ascending=False).index]
    text = "Duplicates: " + "; ".join(costs) + "."
    none = list(dup.index[dup == 0])
    if none:
        text += f" {_names(none)} mint{'s' if len(none) == 1 else ''} none."
    return text


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
    all_facts = [facts(r) for r in results]
    for attribute, what in (("lowest_load", "the lowest refresh load"), ("fewest_failures", "the fewest failures")):
        sentences.append(_winners([getattr(f, attribute) for f in all_facts], labels, what))
    ranges = {}
    for f in all_facts:
        for name, value in f.duplicates_per_1k.dropna().items():
            ranges.setdefault(name, []).append(value)
    dup = [f"{n} {style.fmt(min(v))}–{style.fmt(max(v))}" if min(v) != max(v) else f"{n} {style.fmt(v[0])}"
           for n, v in ranges.items() if max(v) > 0]
    sentences.append("Duplicate tokens per 1k refreshes: " + "; ".join(dup) + "." if dup
                     else "No variant minted duplicate tokens in any run.")
    return " ".join(s for s in sentences if s)


def _winners(per_run: list[list[str]], labels: list[str], what: str) -> str:
    known = [(names, label) for names, label in zip(per_run, labels) if names]
    if not known:
        return ""
    firsts = {tuple(names) for names, _ in known}
    if len(firsts) == 1 and len(known) == len(labels):
        names = list(next(iter(firsts)))
        return f"{_names(names)} {'has' if len(names) == 1 else 'share'} {what} in every run."
    grouped: dict[str, list[str]] = {}
    for names, label in known:
        grouped.setdefault(_names(names), []).append(label)
    return f"{what[0].upper()}{what[1:]}: " + "; ".join(f"{n} ({', '.join(ls)})" for n, ls in grouped.items()) + "."
