"""Memory of the reference server's ledger over a long run: flat with pruning, growing without.

Drives the ledger the way the server's units of work do (``policy.login``, ``begin_refresh`` /
``finish_refresh`` on a :class:`loadtests.server.store.MemoryStore` with the record rows off, as
``refreshlab serve`` keeps them unless ``--ledger`` asks), without HTTP or JWTs — those keep
nothing between requests. The clock is injected: each refresh moves scenario time on, so tokens
expire as they would in a run of many hours.

Workload: ``--users`` users, each refreshing every ``--interval`` scenario seconds (rotation with
family reuse detection, 5-minute access tokens, 1-hour refresh families); a user whose family
lapsed logs in again. Memory is the process's resident set (psutil) after a garbage collection,
taken at each checkpoint, and the ledger's token and session counts. The totals are checked to
survive pruning: ``refresh_calls`` equals the number of refreshes made.

The same workload is run without pruning as the baseline, in a separate child process each, so
that one run's freed memory cannot hide the other's growth. Reported: RSS at 100k and 500k
refreshes and their ratio (goal: at most 1.2 with pruning).

Run: ``python bench/bench_ledger_memory.py [--checkpoints 100000,500000] [--users 2000] [--json]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import psutil


def measure(checkpoints: list[int], users: int, interval_s: float, prune: bool) -> dict:
    """Run the workload to the last checkpoint; RSS (bytes), tokens and sessions at each."""
    from loadtests.server.store import MemoryStore
    from sim.scenario import parse_scenario

    scenario = parse_scenario({
        "tokens": {"access_ttl": "5m", "refresh_ttl": "1h"},
        "strategies": [{"name": "rotating", "client": {"trigger": "reactive"},
                        "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "family"}}],
    })
    policy = scenario.strategies[0].server
    store = MemoryStore(retain_s=60.0 if prune else None, records=False)
    ledger = store.ledger
    holding = [None] * users  # each user's refresh token
    step_s = interval_s / users
    now = 0.0
    done = 0
    rows = []
    process = psutil.Process()
    for target in checkpoints:
        while done < target:
            user = done % users
            now += step_s
            token = holding[user]
            if token is None:
                holding[user] = policy.login(ledger, store.user_id(f"user-{user}"), now).refresh
                continue
            pending = policy.begin_refresh(ledger, token, None, now)
            outcome = policy.finish_refresh(ledger, pending, now)
            done += 1
            holding[user] = getattr(outcome, "refresh", None)  # refused (family lapsed): log in again
        gc.collect()
        rows.append({"refreshes": done, "rss_bytes": process.memory_info().rss, "tokens": len(ledger.tokens),
                     "sessions": len(ledger.sessions), "refresh_calls": ledger.totals()["refresh_calls"],
                     "scenario_hours": now / 3600})
    assert rows[-1]["refresh_calls"] == done, "the totals must count every refresh, pruned or not"
    return {"prune": prune, "users": users, "interval_s": interval_s, "checkpoints": rows}


def run_child(checkpoints: list[int], users: int, interval_s: float, prune: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--checkpoints", ",".join(map(str, checkpoints)),
               "--users", str(users), "--interval", str(interval_s), "--prune" if prune else "--no-prune"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="100000,500000")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=240.0, help="scenario seconds between a user's refreshes")
    parser.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    checkpoints = [int(n) for n in args.checkpoints.split(",")]
    if args.child:
        print(json.dumps(measure(checkpoints, args.users, args.interval, bool(args.prune))))
        return
    results = {"pruned": run_child(checkpoints, args.users, args.interval, True),
               "unpruned": run_child(checkpoints, args.users, args.interval, False)}
    for result in results.values():
        rows = result["checkpoints"]
        result["rss_ratio_last_to_first"] = rows[-1]["rss_bytes"] / rows[0]["rss_bytes"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.users} users refreshing every {args.interval:g} scenario seconds")
    print(f"{'':10} {'refreshes':>10} {'RSS MB':>8} {'tokens':>9} {'sessions':>9} {'hours':>7}")
    for name, result in results.items():
        for row in result["checkpoints"]:
            print(f"{name:10} {row['refreshes']:>10} {row['rss_bytes'] / 1e6:>8.1f} {row['tokens']:>9} "
                  f"{row['sessions']:>9} {row['scenario_hours']:>7.1f}")
        print(f"{name:10} RSS ratio {checkpoints[-1]} / {checkpoints[0]} refreshes: {result['rss_ratio_last_to_first']:.2f}")


if __name__ == "__main__":
    main()
