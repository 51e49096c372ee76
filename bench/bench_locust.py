"""Throughput of the project's Locust user against a bare ``FastHttpUser`` (not a CI test).

    python bench/bench_locust.py [--users 10] [--seconds 15]

One reference server (no service time) on 127.0.0.1; the same number of users hitting ``GET /ping``
as fast as they can, first with a bare FastHttpUser (this file, loaded by Locust), then with the
project's ``PolicyUser`` (``loadtests/locustfile.py --api-path /ping``: a long-lived token, zero
think time, bursts of one, so every request goes through the client policy and the records).
Prints requests/s and Locust's CPU time per request for both, and their ratio (goal >= 85%).
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ != "__main__":
    # loaded by Locust as a locustfile: the bare baseline
    from locust import FastHttpUser, constant, task

    class BareUser(FastHttpUser):
        """Requests ``/ping`` back to back, nothing else."""

        wait_time = constant(0)

        @task
        def ping(self):
            self.client.get("/ping")

BENCH_SCENARIO = """
[run]
duration = "1h"
[population]
users = {users}
[workload]
think_time = "0s"
burst_size = 1
[tokens]
access_ttl = "1d"
[[strategies]]
name = "bench"
client = {{ trigger = "reactive" }}
server = {{ kind = "dual_token" }}
"""


def run_locust(url: str, locustfile: Path, users: int, seconds: int, work: Path, name: str, *extra: str) -> dict:
    """Run Locust headless; returns its ``/ping`` requests/s and CPU seconds per request."""
    prefix = work / name
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", url,
                    "-u", str(users), "-r", str(users), "--run-time", f"{seconds}s", "--only-summary",
                    "--exit-code-on-error", "0", "--csv", str(prefix), *extra],
                   check=True, capture_output=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "/ping")
    requests = int(row["Request Count"])
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"requests": requests, "rps": float(row["Requests/s"]), "cpu_us_per_request": 1e6 * cpu_s / max(requests, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from loadtests.server.process import serve_in_subprocess

    with tempfile.TemporaryDirectory(prefix="refreshlab-bench-") as tmp:
        work = Path(tmp)
        scenario = work / "bench.toml"
        scenario.write_text(BENCH_SCENARIO.format(users=args.users))
        with serve_in_subprocess(scenario, "bench", 1.0, service_time=False) as url:
            bare = run_locust(url, Path(__file__).resolve(), args.users, args.seconds, work, "bare")
            time.sleep(1)
            ours = run_locust(url, root / "loadtests" / "locustfile.py", args.users, args.seconds, work, "ours",
                              "--scenario", str(scenario), "--strategy", "bench", "--api-path", "/ping")
    print(f"{args.users} users, {args.seconds} s each, GET /ping on 127.0.0.1")
    print(f"{'user':<28}{'requests/s':>12}{'locust CPU us/request':>24}")
    for label, r in (("bare FastHttpUser", bare), ("refreshlab PolicyUser", ours)):
        print(f"{label:<28}{r['rps']:>12.0f}{r['cpu_us_per_request']:>24.0f}")
    print(f"ratio (PolicyUser / bare): {ours['rps'] / bare['rps']:.0%} of requests/s, "
          f"{bare['cpu_us_per_request'] / ours['cpu_us_per_request']:.0%} of CPU efficiency")


if __name__ == "__main__":
    main()
