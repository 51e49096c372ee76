"""Runs scenarios: every (replication, variant) pair is an independent simulation, run in
parallel (worker processes or a Dask cluster, :mod:`sim.engine.dispatch`) when there are
several; the tables of all of them make one RunResult."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from sim.engine.model import FastSimulation, Simulation
from sim.engine.streams import generator
from sim.metrics import summarize, summary_table
from sim.scenario import Scenario

if TYPE_CHECKING:
    from sim.results import RunResult

# pandas is imported only where tables are built (in the process that assembles a run, once its
# simulations are done): a worker process that only simulates is spared its memory (about 75 MB
# a process, as much as several thousand simulated users)

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


def instance_users(scenario: Scenario, seed: int, replication: int, instance: int) -> np.ndarray:
    """The users (indices, ascending) that the auth tier's load balancer sends to ``instance``:
    each user goes to one of the ``auth.instances`` instances, uniformly at random, by a draw
    of its own stream of the run (the same for every variant: common random numbers)."""
    k = scenario.auth.instances
    where = generator(seed, replication, 0, 3).integers(0, k, scenario.population.users)
    return np.flatnonzero(where == instance)


def simulate_instance(scenario: Scenario, name: str, replication: int, seed: int, events: bool, instance: int | None,
                      engine: str = DEFAULT_ENGINE, progress: Callable[[float], None] | None = None):
    """The users of one auth-tier instance (:func:`instance_users`; every user for ``instance``
    None), one variant, one replication: (:class:`~sim.metrics.Counts`, events or None), made
    into tables by :func:`assemble` (merged with the other instances' first). ``progress(share)``
    hears how much of the scenario's time has been simulated, a hundred times a run.

    Exact, not an approximation: users of different instances share nothing (each instance has
    its own workers and queue, sessions belong to one user, and every draw a user takes comes
    from streams keyed by that user), so one instance's users do in this job exactly what they
    do beside the others."""
    variant = scenario.variant(name)
    users = None if instance is None else instance_users(scenario, seed, replication, instance)
    rec = ENGINES[engine](scenario, variant, replication, seed, events, users=users, progress=progress).run()
    return rec.counts, rec.events()


def _merge_instances(scenario: Scenario, name: str, replication: int, parts: list):
    """The output of :func:`simulate_one` for the whole population, from every instance's
    :func:`simulate_instance` output (in instance order, so that the sums are always the same;
    one part: the whole population's)."""
    import pandas as pd

    counts = parts[0][0]
    for other, _ in parts[1:]:
        counts.merge(other)
    row, series, latency = summarize(
        counts, strategy=name, replication=replication, users=scenario.population.users,
        warmup_s=scenario.run.warmup_s, duration_s=scenario.run.duration_s,
        workers=scenario.auth.workers * scenario.auth.instances,
    )
    tables = [events for _, events in parts]
    events = None
    if len(tables) == 1:
        events = tables[0]
    elif all(t is not None for t in tables):
        # every instance's ledger numbers its sessions and tokens from the start: shift each
        # instance's numbers past the ones before, so that they stay unique in the run
        shifted, offset = [], 0
        for table in tables:
            table = table.copy()
            ids = table[["session", "token", "basis"]]
            for col in ("session", "token", "basis"):
                table[col] = table[col] + offset
            top = ids.max().max()
            offset += 0 if pd.isna(top) else int(top) + 1
            shifted.append(table)
        events = pd.concat(shifted, ignore_index=True).sort_values("t_s", kind="stable").reset_index(drop=True)
    return row, series, latency, events


def jobs_of(scenario: Scenario, names: Iterable[str], tag=None, events: bool = False, engine: str | None = None) -> list:
    """The simulations of a run: every replication of every named variant, each a
    :class:`~sim.engine.dispatch.Job` tagged ``tag``; one job per auth-tier instance when the
    scenario's tier has several (``auth.instances``), whose outputs :func:`assemble` merges."""
    from sim.engine.dispatch import Job

    parts = [None] if scenario.auth.instances == 1 else list(range(scenario.auth.instances))
    return [Job(scenario, name, r, scenario.run.seed, events, tag, engine, instance)
            for r in range(scenario.run.replications) for name in names for instance in parts]


def assemble(scenario: Scenario, names: list[str], outputs: dict) -> RunResult:
    """A :class:`RunResult` from the outputs of :func:`jobs_of`'s jobs (each a
    :func:`simulate_instance` output), keyed by each job's :attr:`~sim.engine.dispatch.Job.key`
    (``(name, replication)``, or ``(name, replication, instance)`` for the jobs of one auth-tier
    instance: merged here, in instance order)."""
    import pandas as pd

    from sim.results import RunResult

    k = scenario.auth.instances
    parts = {(name, r): [outputs[name, r]] if k == 1 else [outputs[name, r, i] for i in range(k)]
             for r in range(scenario.run.replications) for name in names}
    ordered = [_merge_instances(scenario, name, r, parts[name, r])
               for r in range(scenario.run.replications) for name in names]
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
    progress: Callable[[float, int], None] | None = None,
    engine: str | None = None,
) -> RunResult:
    """Simulate every strategy variant (or those named in ``strategies``) of ``scenario``.

    ``seed`` and ``replications`` override the scenario's. The (variant, replication)
    simulations run in parallel: ``processes`` worker processes on this machine (default: one
    per core for big runs; 1 runs in this process), or on the Dask scheduler ``cluster`` (an
    address such as ``"tcp://10.0.0.5:8786"`` or a ``distributed.Client``). Where they run never
    changes the result; with more simulations than workers, they start longest first
    (:func:`~sim.engine.dispatch.longest_first`). A worker that dies raises
    :class:`~sim.engine.dispatch.WorkerLost`.
    ``progress(done, total)`` hears how many of the ``total`` simulations are done, counting
    those under way by the share of their scenario time simulated so far (a Dask cluster's only
    as they finish). ``engine``: ``"fast"`` (the
    default) or ``"exact"``, with identical results (:data:`ENGINES`). Returns a :class:`RunResult`.
    """
    from sim.engine.dispatch import JobsDone, runner_for

    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")

    scenario = scenario.with_run(seed, replications)
    names = scenario.chosen(strategies)
    jobs = jobs_of(scenario, names, events=events, engine=engine)
    tally = JobsDone(progress, len(jobs)) if progress is not None else None
    outputs = {}
    with runner_for(jobs, processes=processes, cluster=cluster, progress=tally and tally.moved) as runner:
        runner.submit_all(jobs)
        while runner.pending:
            job, out = runner.next_done()
            outputs[job.key] = out
            if tally is not None:
                tally.finished(job)
    result = assemble(scenario, names, outputs)
    result.meta["engine"] = engine or DEFAULT_ENGINE
    return result
