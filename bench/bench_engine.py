"""Simulator speed, as a ratio to a bare SimPy model of the same workload, in one process.

The bare model has the same users, page views, bursts (one process per parallel request) and
round trips as the scenario, but no strategy, ledger or records: SimPy's floor for this traffic.
The ratio (bare time / refreshlab time) says what the strategy rules and bookkeeping cost on top;
absolute numbers are also printed but vary with the machine's load.

    python bench/bench_engine.py [SCENARIO] [--strategy NAME] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import simpy

import sim
from sim.engine import simulate_one
from sim.engine.streams import UserStreams, arrival_times, user_traits

ROOT = Path(__file__).resolve().parents[1]


def bare(scenario) -> int:
    """The workload alone in SimPy; returns the number of requests simulated."""
    env = simpy.Environment()
    count = [0]
    arrivals = arrival_times(scenario, scenario.run.seed, 0)
    tabs, _ = user_traits(scenario, scenario.run.seed, 0)

    def request(s):
        rtt = s.api_rtt()
        yield env.timeout(rtt / 2)
        yield env.timeout(rtt / 2)
        count[0] += 1

    def tab(s):
        while True:
            others = [env.process(request(s)) for _ in range(int(s.burst()) - 1)]
            yield from request(s)
            if others:
                yield env.all_of(others)
            yield env.timeout(s.think())

    def user(u, s):
        yield env.timeout(float(arrivals[u]))
        for _ in range(int(tabs[u])):
            env.process(tab(s))

    for u in range(scenario.population.users):
        env.process(user(u, UserStreams(scenario, scenario.run.seed, 0, u)))
    env.run(until=scenario.run.end_s)
    return count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios/baseline.toml"))
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # visits end and users return in the real model; the bare one keeps everybody: compare like with like
    scenario = sim.load_scenario(args.scenario).replace(population={"session_length": None, "away": None})
    names = [args.strategy] if args.strategy else scenario.names
    t_bare, n_bare = [], 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        n_bare = bare(scenario)
        t_bare.append(time.perf_counter() - started)
    print(f"bare SimPy: {n_bare:,} requests in {statistics.median(t_bare):.2f} s (median of {args.repeat})")
    for name in names:
        times, requests = [], 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            row = simulate_one(scenario, name, 0, scenario.run.seed, False)[0]
            times.append(time.perf_counter() - started)
            requests = row["requests"]
        ratio = statistics.median(t_bare) / statistics.median(times)
        print(f"{name:>28}: {requests:,} requests (window) in {statistics.median(times):.2f} s "
              f"— speed {ratio:.2f}x of bare SimPy")


if __name__ == "__main__":
    main()
