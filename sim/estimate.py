"""How much work a scenario asks for, estimated before it runs: requests, timer ticks, records,
and the memory they need — so that a scenario no machine can run is refused with the numbers,
instead of failing after minutes with a MemoryError (or the OOM killer).

The per-item costs are measured orders of magnitude of the engine (about nine kilobytes per
simulated user; a few hundred bytes per record, held only when every record is asked for — the
counts of a run are kept online); the estimate is meant to catch scenarios that are off by factors
of ten or more, not to budget the last megabyte.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from sim.scenario import Scenario

#: bytes per simulated user (flows, draw streams, tabs, ledger entries), measured on the baseline
#: (resident memory of a worker process at 20,000 and 100,000 users: 8.0 to 8.5 kB)
USER_BYTES = 9_000
#: bytes per record held in memory (events kept for the tables of a run)
RECORD_BYTES = 300
#: records a request leaves (request, attempt, and a share of renewals)
RECORDS_PER_REQUEST = 2.5
#: bytes of a replication however small (a worker process's interpreter, numpy and the engine,
#: about 50 MB, and a share of the parent's)
BASE_BYTES = 100_000_000


@dataclass(frozen=True)
class WorkEstimate:
    """What one replication of one variant needs, and the whole run's peak memory."""

    requests: float
    timer_ticks: float
    peak_bytes: float

    def describe(self) -> str:
        return (f"about {_count(self.requests)} requests and {_count(self.timer_ticks)} timer ticks per "
                f"replication, needing about {_bytes(self.peak_bytes)} of memory")


def estimate(scenario: Scenario, *, parallel: int | None = None, events: bool = False) -> WorkEstimate:
    """The work of ``scenario``; ``parallel`` replications held in memory at once (default: the
    number of CPUs, as ``sim.run`` spreads replications over processes); ``events``: every record
    is held (``--events``), else only counts."""
    pop, run = scenario.population, scenario.run
    users = pop.users
    seconds = run.end_s
    think_s = max(scenario.workload.think_time.mean, 1e-3)
    burst = max(scenario.workload.burst_size.mean, 1.0)
    tabs = max(pop.tabs.mean, 1.0)
    requests = users * tabs * (seconds / think_s) * burst
    ticks = 0.0
    for variant in scenario.strategies:
        interval = variant.client.timer_interval_s
        if interval:
            ticks = max(ticks, users * tabs * seconds / interval)
    records = (requests + ticks / 10) * RECORDS_PER_REQUEST if events else 0.0
    per_replication = BASE_BYTES + users * tabs * USER_BYTES + records * RECORD_BYTES
    at_once = min(run.replications * len(scenario.strategies), parallel or os.cpu_count() or 1)
    return WorkEstimate(requests, ticks, per_replication * at_once)


def available_bytes() -> float | None:
    """Memory the machine can give now (Linux ``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


class TooMuchWork(Exception):
    """The scenario needs more memory than the machine has; the message has the estimate."""


def check(scenario: Scenario, *, force: bool = False, available: float | None = None,
          parallel: int | None = None, events: bool = False) -> str | None:
    """Raise :class:`TooMuchWork` when ``scenario`` needs more memory than is available (a
    warning text instead when ``force``); None when it fits or the memory is unknown. ``parallel``
    and ``events``: see :func:`estimate`."""
    work = estimate(scenario, parallel=parallel, events=events)
    free = available if available is not None else available_bytes()
    if free is None or work.peak_bytes <= free:
        return None
    message = (f"this scenario asks for {work.describe()}; the machine has about {_bytes(free)} available")
    if not force:
        raise TooMuchWork(message + ". Make it smaller (users, duration, replications), or pass --force to try anyway")
    return message + "; running anyway (--force)"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _count(n: float) -> str:
    if not math.isfinite(n):
        return "infinitely many"
    for unit, size in (("trillion", 1e12), ("billion", 1e9), ("million", 1e6), ("thousand", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"
