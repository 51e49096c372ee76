"""Throughput of the project's Locust user against a bare ``FastHttpUser`` (not a CI test).

    python bench/bench_locust.py [--users 10] [--seconds 10] [--rounds 3]

One reference server (no service time) on 127.0.0.1; the same number of users hitting ``GET /ping``
as fast as they can, in alternating rounds, with:

- a bare FastHttpUser (this file, loaded by Locust) sending nothing but the request;
- the project's ``PolicyUser`` (``loadtests/locustfile.py --api-path /ping``: a long-lived token,
  zero think time, bursts of one, so every request goes through the client policy and the flows).

Prints the medians of requests/s and Locust's CPU time per request, and the ratios (goal >= 85%
of the bare user's requests/s).
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
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
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from loadtests.server.process import serve_in_subprocess

    bench_file, ours_file = Path(__file__).resolve(), root / "loadtests" / "locustfile.py"
    users = {
        "bare FastHttpUser": (bench_file, "BareUser"),
        "refreshlab PolicyUser": (ours_file, "--api-path", "/ping"),
    }
    runs: dict[str, list[dict]] = {label: [] for label in users}
    with tempfile.TemporaryDirectory(prefix="refreshlab-bench-") as tmp:
        work = Path(tmp)
        scenario = work / "bench.toml"
        scenario.write_text(BENCH_SCENARIO.format(users=args.users))
        ours_options = ("--scenario", str(scenario), "--strategy", "bench")
        with serve_in_subprocess(scenario, "bench", 1.0, service_time=False) as url:
            # alternate, so that a burst of other load on the machine hits every user alike
            for i in range(args.rounds):
                for j, (label, (locustfile, *extra)) in enumerate(users.items()):
                    if locustfile == ours_file:
                        extra = [*ours_options, *extra]
                    runs[label].append(run_locust(url, locustfile, args.users, args.seconds, work, f"u{j}r{i}", *extra))
                    time.sleep(1)
    median = {label: {k: statistics.median(r[k] for r in rs) for k in ("rps", "cpu_us_per_request")}
              for label, rs in runs.items()}
    print(f"{args.users} users, {args.rounds} alternating rounds of {args.seconds} s, GET /ping on 127.0.0.1 (medians)")
    print(f"{'user':<28}{'requests/s':>12}{'locust CPU us/request':>24}")
    for label, m in median.items():
        print(f"{label:<28}{m['rps']:>12.0f}{m['cpu_us_per_request']:>24.0f}")
    ours, base = median["refreshlab PolicyUser"], median["bare FastHttpUser"]
    print(f"ratio (PolicyUser / bare): {ours['rps'] / base['rps']:.0%} of requests/s (goal >= 85%), "
          f"{base['cpu_us_per_request'] / ours['cpu_us_per_request']:.0%} of CPU efficiency")


if __name__ == "__main__":
    main()
