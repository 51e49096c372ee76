"""Runs scenarios: every (replication, variant) pair is an independent simulation, run in
parallel processes when there are several; the tables of all of them make one RunResult."""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterable

import pandas as pd

from sim.engine.model import FastSimulation, Simulation
from sim.metrics import summarize, summary_table
from sim.results import RunResult
from sim.scenario import Scenario


#: the engines: ``exact`` simulates every request; ``fast`` carries plain requests out in one
#: step and gives identical results (see :class:`~sim.engine.model.FastSimulation`)
ENGINES = {"exact": Simulation, "fast": FastSimulation}


def simulate_one(scenario: Scenario, name: str, replication: int, seed: int, events: bool, engine: str = "fast"):
    """One variant, one replication: (summary row, timeseries, latency histogram, events)."""
    variant = scenario.variant(name)
    rec = ENGINES[engine](scenario, variant, replication, seed, events).run()
    row, series, latency = summarize(
        rec.counts, strategy=name, replication=replication, users=scenario.population.users,
        warmup_s=scenario.run.warmup_s, duration_s=scenario.run.duration_s, workers=scenario.auth.workers,
    )
    return row, series, latency, rec.events()


#: below this many user-seconds in all, a run stays in this process
SMALL_RUN_USER_SECONDS = 5_000_000


def _simulate_job(task):
    scenario, name, replication, seed, events, engine = task
    return (name, replication), simulate_one(scenario, name, replication, seed, events, engine)


def run(
    scenario: Scenario,
    *,
    seed: int | None = None,
    replications: int | None = None,
    events: bool = False,
    strategies: Iterable[str] | None = None,
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "fast",
) -> RunResult:
    """Simulate every strategy variant (or those named in ``strategies``) of ``scenario``.

    ``seed`` and ``replications`` override the scenario's. ``processes``: worker processes
    (default: one per core for big runs; 1 runs in this process).
    ``progress(done, total)`` is called as jobs finish. ``engine``: ``"fast"`` (default) or
    ``"exact"``, with identical results (:data:`ENGINES`). Returns a :class:`RunResult`.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    overrides = {k: v for k, v in (("seed", seed), ("replications", replications)) if v is not None}
    if overrides:
        scenario = scenario.replace(run=overrides)
    names = list(strategies) if strategies is not None else scenario.names
    for name in names:
        scenario.variant(name)
    jobs = [(name, r) for r in range(scenario.run.replications) for name in names]
    if processes is None:
        # starting worker processes costs seconds: only worth it when the jobs are big
        size = scenario.population.users * scenario.run.end_s * len(jobs)
        processes = min(len(jobs), os.cpu_count() or 1) if size > SMALL_RUN_USER_SECONDS else 1
    report = progress or (lambda done, total: None)
    report(0, len(jobs))
    results = {}
    if processes <= 1:
        for i, job in enumerate(jobs, 1):
            results[job] = simulate_one(scenario, *job, scenario.run.seed, events, engine)
            report(i, len(jobs))
    else:
        # a Pool, not a ProcessPoolExecutor: leaving its block terminates the workers at once,
        # so an interrupted run stops now instead of finishing the jobs under way
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            tasks = [(scenario, name, r, scenario.run.seed, events, engine) for name, r in jobs]
            for i, (job, out) in enumerate(pool.imap_unordered(_simulate_job, tasks), 1):
                results[job] = out
                report(i, len(jobs))
    ordered = [results[job] for job in jobs]
    per_replication = pd.DataFrame([r[0] for r in ordered])
    event_tables = [r[3] for r in ordered if r[3] is not None]
    return RunResult(
        scenario=scenario,
        summary=summary_table(per_replication),
        timeseries=pd.concat([r[1] for r in ordered], ignore_index=True),
        latency=pd.concat([r[2] for r in ordered], ignore_index=True),
        events=pd.concat(event_tables, ignore_index=True) if event_tables else None,
        meta={"strategies": names, "engine": engine},
    )
