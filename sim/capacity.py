"""Capacity answers: per variant and population, the fewest auth workers that meet a service
level objective such as ``auth_queue_wait_ms_p99 < 50``.

A search over worker counts, not a grid: from a first guess, doubling until the objective is met
(or halving while it is), then a binary search between the last count that failed and the first
that passed. A variant's populations are searched from the smallest up, each starting from the
previous population's answer; the variants are searched side by side. It relies on the
measure not growing with workers (waits, utilisation, added latency), which common random
numbers make hold run to run: every probe of a search sees the same users doing the same
things. The answer is a count ``w`` that was simulated and met the objective, with ``w - 1``
simulated and failing it (or ``w = 1``). All searches run side by side; each probe's
simulations run in parallel like any other run's (:mod:`sim.engine.dispatch`).

With several replications an objective is met only when the upper end of the 95% confidence
interval of the measure meets it, so that a conclusion follows from the interval, not from a
lucky mean.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sim.metrics import METRIC_COLUMNS
from sim.scenario import Scenario
from sim.units import format_number

_OPS = {"<": operator.lt, "<=": operator.le}
#: measures that do not grow as workers are added: the ones an objective may bound
MONOTONE = ("auth_queue_wait_ms_p99", "auth_utilization", "added_latency_ms_p50", "added_latency_ms_p95",
            "added_latency_ms_p99", "failed_requests", "forced_logins", "expiry_failures")


@dataclass(frozen=True)
class SLO:
    """``metric op threshold``: a summary column (docs/metrics.md), ``<`` or ``<=``, a number."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def met(self, mean: float, ci95: float) -> bool:
        """Whether a measured mean (and its CI half-width, NaN with one replication) meets it:
        the upper end of the interval must. A measure that is missing (NaN) meets nothing."""
        if mean is None or math.isnan(mean):
            return False
        upper = mean + (0.0 if ci95 is None or math.isnan(ci95) else ci95)
        return _OPS[self.op](upper, self.threshold)


def parse_slo(text: str) -> SLO:
    """``"auth_queue_wait_ms_p99 < 50"`` -> :class:`SLO`; ``ValueError`` saying what is expected."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(<=|<)\s*([0-9.eE+-]+)\s*", text)
    if not m:
        raise ValueError(f"expected METRIC < NUMBER (or <=), e.g. 'auth_queue_wait_ms_p99 < 50', got {text!r}")
    metric, op, number = m.groups()
    if metric not in MONOTONE:
        known = " (a summary column, but it can grow with workers)" if metric in METRIC_COLUMNS else ""
        raise ValueError(f"unknown metric {metric!r}{known}; expected one of: {', '.join(MONOTONE)}")
    try:
        threshold = float(number)
    except ValueError:
        raise ValueError(f"{number!r} is not a number") from None
    return SLO(metric, op, threshold)


_SUFFIX = {"": 1, "k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}


def parse_users(text: str) -> list[int]:
    """``"10k,100k,1M"`` -> ``[10000, 100000, 1000000]`` (sorted, duplicates dropped)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmM]?)\s*", part)
        if not m:
            raise ValueError(f"expected user counts like 10k,100k,1M, got {part.strip()!r}")
        value = float(m.group(1)) * _SUFFIX[m.group(2)]
        if value < 1 or value != int(value):
            raise ValueError(f"expected a whole number of users of at least 1, got {part.strip()!r}")
        out.append(int(value))
    return sorted(set(out))


@dataclass
class Search:
    """The search for one variant at one population: what has been probed and what is next."""

    variant: str
    users: int
    max_workers: int
    #: the first count to simulate (a smaller population's answer is a good guess)
    start: int = 1
    failed_below: int = 0  # the largest count known to fail (0: none probed yet)
    passed_at: int | None = None  # the smallest count known to pass
    probes: dict[int, tuple[float, float, bool]] = field(default_factory=dict)
    #: the measure was missing (nothing measured): no count can be said to meet the objective
    unmeasured: bool = False

    def next_workers(self) -> int | None:
        """The next count to simulate, or None when the search is over."""
        if self.unmeasured:
            return None
        if not self.probes:
            return min(max(self.start, 1), self.max_workers)
        if self.passed_at is None:  # only failures so far: double
            if self.failed_below >= self.max_workers:
                return None
            return min(self.failed_below * 2, self.max_workers)
        if self.passed_at - self.failed_below <= 1:
            return None
        if self.failed_below == 0:  # only passes so far (a generous start): halve
            return self.passed_at // 2
        return (self.failed_below + self.passed_at) // 2

    def record(self, workers: int, mean: float, ci95: float, met: bool) -> None:
        self.probes[workers] = (mean, ci95, met)
        if mean != mean:
            self.unmeasured = True
        elif met:
            self.passed_at = workers if self.passed_at is None else min(self.passed_at, workers)
        else:
            self.failed_below = max(self.failed_below, workers)

    @property
    def answer(self) -> int | None:
        return self.passed_at


@dataclass
class CapacityResult:
    """The answers (:attr:`table`, one row per variant and population) and every simulated
    probe (:attr:`probes`)."""

    scenario: Scenario
    slo: SLO
    users: list[int]
    replications: int
    max_workers: int
    table: pd.DataFrame
    probes: pd.DataFrame
    path: Path | None = None

    def wide(self) -> pd.DataFrame:
        """Workers needed, one row per variant (scenario order), one column per population;
        ``None`` where even ``max_workers`` did not meet the objective."""
        wide = self.table.pivot(index="variant", columns="users", values="workers_needed")
        return wide.reindex([n for n in self.scenario.names if n in wide.index])

    def figure(self):
        """The capacity chart (workers needed against users, one line per variant)."""
        from sim.report import capacity

        return capacity.figure(self)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``capacity.csv``, ``probes.csv``, ``charts/capacity.png|svg``,
        ``scenario.resolved.toml`` and ``run.json`` into a folder, atomically."""
        from sim.results import atomic_dir

        with atomic_dir(out_dir) as tmp:
            self.table.to_csv(tmp / "capacity.csv", index=False)
            self.probes.to_csv(tmp / "probes.csv", index=False)
            (tmp / "scenario.resolved.toml").write_text(self.scenario.to_toml(), encoding="utf-8")
            (tmp / "charts").mkdir()
            fig = self.figure()
            for ext in ("png", "svg"):
                fig.savefig(tmp / "charts" / f"capacity.{ext}")
            meta = {"kind": "capacity", "partial": False, "slo": str(self.slo), "users": self.users,
                    "replications": self.replications, "max_workers": self.max_workers,
                    "criterion": "upper end of the 95% CI" if self.replications > 1 else "the single replication's value"}
            (tmp / "run.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        self.path = Path(out_dir)
        return self.path


def probe_scenario(scenario: Scenario, users: int, workers: int) -> Scenario:
    """The base scenario at a population and a worker count."""
    return scenario.replace(population={"users": users}, auth={"workers": workers})


def capacity(
    scenario: Scenario,
    slo: SLO | str,
    users: list[int] | str,
    *,
    strategies: list[str] | None = None,
    replications: int | None = None,
    seed: int | None = None,
    max_workers: int = 1024,
    processes: int | None = None,
    cluster: Any = None,
    progress: Callable[[str], None] | None = None,
    engine: str | None = None,
) -> CapacityResult:
    """For every variant (or those in ``strategies``) and population in ``users``, the fewest
    auth workers that meet ``slo`` (an :class:`SLO` or its text). ``replications`` and ``seed``
    override the scenario's; ``max_workers`` bounds the search. ``progress(message)`` hears of
    every finished probe."""
    from sim.engine import assemble, jobs_of
    from sim.engine.dispatch import Job, runner_for

    slo = parse_slo(slo) if isinstance(slo, str) else slo
    users = parse_users(users) if isinstance(users, str) else sorted(set(int(u) for u in users))
    scenario = scenario.with_run(seed, replications)
    names = scenario.chosen(strategies)
    reps = scenario.run.replications
    searches = [Search(name, n, max_workers) for name in names for n in users]
    # per variant, the searches in order of population: each starts from the one before's answer
    following = {k: k + 1 for k in range(len(searches) - 1) if searches[k + 1].variant == searches[k].variant}
    tell = progress or (lambda message: None)
    rows = []
    # a rough size for choosing processes: the first probe of every search
    first = [Job(probe_scenario(scenario, s.users, 1), s.variant, 0, scenario.run.seed) for s in searches]
    with runner_for(first * reps, processes=processes, cluster=cluster) as runner:
        waiting: dict[tuple[int, int], dict] = {}

        def launch(k: int) -> None:
            workers = searches[k].next_workers()
            if workers is None:
                if k in following:  # this population is done: the next one starts from its answer
                    nxt = searches[following[k]]
                    nxt.start = searches[k].answer or (1 if searches[k].unmeasured else max_workers)
                    launch(following[k])
                return
            probe = probe_scenario(scenario, searches[k].users, workers)
            jobs = jobs_of(probe, [searches[k].variant], tag=(k, workers), engine=engine)
            waiting[k, workers] = ({}, len(jobs))
            for job in jobs:
                runner.submit(job)

        for k in range(len(searches)):
            if k == 0 or searches[k - 1].variant != searches[k].variant:
                launch(k)
        while runner.pending:
            job, output = runner.next_done()
            k, workers = job.tag
            got, expected = waiting[k, workers]
            got[job.key] = output
            if len(got) < expected:
                continue
            del waiting[k, workers]
            search = searches[k]
            result = assemble(job.scenario, [search.variant], got)
            row = result.aggregate.loc[search.variant]
            mean, ci = float(row[slo.metric]), float(row.get(f"{slo.metric}_ci95", math.nan))
            met = slo.met(mean, ci)
            search.record(workers, mean, ci, met)
            rows.append({"variant": search.variant, "users": search.users, "workers": workers,
                         slo.metric: mean, f"{slo.metric}_ci95": ci, "met": met,
                         "auth_utilization": float(row["auth_utilization"])})
            tell(f"{search.variant}, {search.users:,} users, {workers} workers: {slo.metric} = "
                 f"{format_number(mean)}{f' ±{format_number(ci)}' if ci == ci else ''} -> {'met' if met else 'not met'}")
            launch(k)
    table = []
    for s in searches:
        answer = s.answer
        at = s.probes.get(answer) if answer is not None else None
        below = s.probes.get(answer - 1) if answer is not None and answer > 1 else None
        table.append({
            "variant": s.variant, "users": s.users, "workers_needed": answer,
            slo.metric: at[0] if at else math.nan, f"{slo.metric}_ci95": at[1] if at else math.nan,
            f"{slo.metric}_one_fewer": below[0] if below else math.nan,
            "probes": len(s.probes),
            "status": "met" if answer is not None else "not measured" if s.unmeasured
            else f"not met with {max_workers} workers",
        })
    table = pd.DataFrame(table)
    table["workers_needed"] = table["workers_needed"].astype("Int64")
    order = {n: i for i, n in enumerate(names)}
    table = table.sort_values(["variant", "users"], key=lambda c: c.map(order) if c.name == "variant" else c,
                              ignore_index=True)
    probes = pd.DataFrame(rows).sort_values(["variant", "users", "workers"], ignore_index=True)
    return CapacityResult(scenario, slo, users, reps, max_workers, table, probes)
