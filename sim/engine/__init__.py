"""Runs scenarios: every (replication, variant) pair is an independent simulation, run in
parallel (worker processes or a Dask cluster, :mod:`sim.engine.dispatch`) when there are
several; the tables of all of them make one RunResult."""

from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd

from sim.engine.model import FastSimulation, Simulation
from sim.metrics import summarize, summary_table
from sim.results import RunResult
from sim.scenario import Scenario


#: the engines: ``exact`` simulates every request; ``fast`` carries plain requests out in one
#: step and gives identical results (see :class:`~sim.engine.model.FastSimulation`)
ENGINES = {"exact": Simulation, "fast": FastSimulation}
DEFAULT_ENGINE = "fast"


def simulate_one(scenario: Scenario, name: str, replication: int, seed: int, events: bool,
                 engine: str = DEFAULT_ENGINE):
    """One variant, one replication: (summary row, timeseries, latency histogram, events)."""
    variant = scenario.variant(name)
    rec = ENGINES[engine](scenario, variant, replication, seed, events).run()
    row, series, latency = summarize(
        rec.counts, strategy=name, replication=replication, users=scenario.population.users,
        warmup_s=scenario.run.warmup_s, duration_s=scenario.run.duration_s, workers=scenario.auth.workers,
    )
    return row, series, latency, rec.events()


def jobs_of(scenario: Scenario, names: Iterable[str], tag=None, events: bool = False, engine: str | None = None) -> list:
    """The simulations of a run: every replication of every named variant, each a
    :class:`~sim.engine.dispatch.Job` tagged ``tag``."""
    from sim.engine.dispatch import Job

    return [Job(scenario, name, r, scenario.run.seed, events, tag, engine)
            for r in range(scenario.run.replications) for name in names]


def assemble(scenario: Scenario, names: list[str], outputs: dict) -> RunResult:
    """A :class:`RunResult` from the outputs of :func:`jobs_of`'s jobs, keyed ``(name, replication)``."""
    ordered = [outputs[name, r] for r in range(scenario.run.replications) for name in names]
    per_replication = pd.DataFrame([r[0] for r in ordered])
    event_tables = [r[3] for r in ordered if r[3] is not None]
    return RunResult(
        scenario=scenario,
        summary=summary_table(per_replication),
        timeseries=pd.concat([r[1] for r in ordered], ignore_index=True),
        latency=pd.concat([r[2] for r in ordered], ignore_index=True),
        events=pd.concat(event_tables, ignore_index=True) if event_tables else None,
        meta={"strategies": names},
    )


def run(
    scenario: Scenario,
    *,
    seed: int | None = None,
    replications: int | None = None,
    events: bool = False,
    strategies: Iterable[str] | None = None,
    processes: int | None = None,
    cluster=None,
    progress: Callable[[int, int], None] | None = None,
    engine: str | None = None,
) -> RunResult:
    """Simulate every strategy variant (or those named in ``strategies``) of ``scenario``.

    ``seed`` and ``replications`` override the scenario's. The (variant, replication)
    simulations run in parallel: ``processes`` worker processes on this machine (default: one
    per core for big runs; 1 runs in this process), or on the Dask scheduler ``cluster`` (an
    address such as ``"tcp://10.0.0.5:8786"`` or a ``distributed.Client``). Where they run never
    changes the result. A worker that dies raises :class:`~sim.engine.dispatch.WorkerLost`.
    ``progress(done, total)`` is called as simulations finish. ``engine``: ``"fast"`` (the
    default) or ``"exact"``, with identical results (:data:`ENGINES`). Returns a :class:`RunResult`.
    """
    from sim.engine.dispatch import runner_for

    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")

    overrides = {k: v for k, v in (("seed", seed), ("replications", replications)) if v is not None}
    if overrides:
        scenario = scenario.replace(run=overrides)
    names = list(strategies) if strategies is not None else scenario.names
    for name in names:
        scenario.variant(name)
    jobs = jobs_of(scenario, names, events=events, engine=engine)
    report = progress or (lambda done, total: None)
    report(0, len(jobs))
    outputs = {}
    with runner_for(jobs, processes=processes, cluster=cluster) as runner:
        for job in jobs:
            runner.submit(job)
        while runner.pending:
            job, out = runner.next_done()
            outputs[job.strategy, job.replication] = out
            report(len(outputs), len(jobs))
    result = assemble(scenario, names, outputs)
    result.meta["engine"] = engine or DEFAULT_ENGINE
    return result
