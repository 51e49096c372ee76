"""Owned randomness: one seed per run, child streams per replication, user and source.

Every draw a user makes comes from that user's own stream for that source (think times, bursts,
latency, …), keyed by ``(replication, user, source)``. So every strategy variant sees the same
users doing the same things at the same times (common random numbers), however differently the
variants consume other streams.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from sim.scenario import AllAtOnce, Diurnal, PoissonArrivals, Ramp, Scenario


class Source(IntEnum):
    """The sources of randomness a user draws from, one stream each."""

    THINK = 0
    BURST = 1
    IDLE = 2
    API_LATENCY = 3
    AUTH_LATENCY = 4
    LOSS = 5
    VISIT = 6
    BACKOFF = 7


def generator(seed: int, *key: int) -> np.random.Generator:
    """The stream identified by ``key`` under ``seed``, independent of every other key."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


class Draws:
    """Scalar draws from a distribution, taken from numpy in batches (a scalar numpy call costs
    more than the simulation step that uses it)."""

    __slots__ = ("_sample", "_rng", "_buf", "_i", "_batch", "_floor")

    def __init__(self, dist, rng: np.random.Generator, *, floor: float | None = 0.0, batch: int = 64):
        self._sample = dist.sample if dist is not None else (lambda r, n: r.random(n))
        self._rng = rng
        self._buf: list = []
        self._i = 0
        self._batch = batch
        self._floor = floor

    def __call__(self):
        if self._i >= len(self._buf):
            values = self._sample(self._rng, self._batch)
            if self._floor is not None:
                values = np.maximum(values, self._floor)
            self._buf = values.tolist()
            self._i = 0
        value = self._buf[self._i]
        self._i += 1
        return value


class UserStreams:
    """The draws one user makes, each from its own stream."""

    __slots__ = ("think", "burst", "idle_coin", "idle_gap", "api_rtt", "auth_rtt", "loss", "visit_length", "away", "backoff")

    def __init__(self, scenario: Scenario, seed: int, replication: int, user: int):
        pop, work, net = scenario.population, scenario.workload, scenario.network
        rng = {s: generator(seed, replication, 1, user, int(s)) for s in Source}
        self.think = Draws(work.think_time, rng[Source.THINK])
        self.burst = Draws(work.burst_size, rng[Source.BURST], floor=1)
        self.idle_coin = Draws(None, rng[Source.IDLE], floor=None)
        self.idle_gap = Draws(pop.idle_gap, rng[Source.IDLE])
        self.api_rtt = Draws(net.rtt, rng[Source.API_LATENCY])
        self.auth_rtt = Draws(net.rtt, rng[Source.AUTH_LATENCY])
        self.loss = Draws(None, rng[Source.LOSS], floor=None)
        self.backoff = Draws(None, rng[Source.BACKOFF], floor=None)
        self.visit_length = Draws(pop.session_length, rng[Source.VISIT], batch=8) if pop.session_length else None
        self.away = Draws(pop.away, rng[Source.VISIT], batch=8) if pop.away else None


def arrival_times(scenario: Scenario, seed: int, replication: int) -> np.ndarray:
    """When each user first arrives, in seconds from the start of the run (user order)."""
    pop = scenario.population
    n, arrival = pop.users, pop.arrival
    rng = generator(seed, replication, 0, 0)
    if isinstance(arrival, AllAtOnce):
        return arrival.at_s + rng.uniform(0, arrival.spread_s, n) if arrival.spread_s else np.full(n, arrival.at_s)
    if isinstance(arrival, Ramp):
        return arrival.start_s + rng.uniform(0, arrival.over_s, n)
    if isinstance(arrival, PoissonArrivals):
        return arrival.start_s + np.cumsum(rng.exponential(1 / arrival.rate_per_s, n))
    if isinstance(arrival, Diurnal):
        end, out = scenario.run.end_s, np.empty(0)
        while len(out) < n:  # thinning: propose uniformly, keep in proportion to the intensity
            t = rng.uniform(0, end, 2 * n)
            keep = rng.uniform(0, 1 + arrival.amplitude, 2 * n) < 1 + arrival.amplitude * np.cos(
                2 * np.pi * (t - arrival.peak_s) / arrival.period_s)
            out = np.concatenate([out, t[keep]])
        return np.sort(out[:n])
    raise TypeError(f"unknown arrival pattern {arrival!r}")


def user_traits(scenario: Scenario, seed: int, replication: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: number of tabs (at least 1) and clock skew in seconds (client minus server)."""
    n = scenario.population.users
    tabs = np.maximum(scenario.population.tabs.sample(generator(seed, replication, 0, 1), n), 1).astype(int)
    skew = scenario.clocks.client_skew.sample(generator(seed, replication, 0, 2), n)
    return tabs, skew
