"""Overload that sheds: a bounded auth queue, 503 with Retry-After, clients that honour it with
jitter — in the simulator (exact instants on constant inputs) and on the real server (a bounded
storm on 127.0.0.1 at about twice its capacity)."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

import sim
from loadtests.server import protocol as p
from loadtests.server.process import serve_in_subprocess


def times(result, event, outcome=None):
    ev = result.events
    rows = ev[(ev["event"] == event) & ((ev["outcome"] == outcome) if outcome is not None else True)]
    return rows["t_s"].round(6).tolist()


def burst_scenario(make_scenario, queue_limit, retries=0):
    # one user, five parallel requests per view: at 360 all five find the token expired and
    # refresh at once; one auth worker busy 1 s per refresh
    return make_scenario(
        workload={"think_time": "60s", "burst_size": 5},
        auth={"workers": 1, "refresh_time": "1s", "queue_limit": queue_limit, "retry_after": "5s"},
        strategies=[{"name": "reactive", "client": {"trigger": "reactive", "unavailable_retries": retries,
                                                     "retry_jitter": 0}, "server": {"kind": "dual_token"}}],
    )


def test_simulator_sheds_beyond_the_queue_bound(make_scenario):
    unbounded = sim.run(burst_scenario(make_scenario, None), events=True)
    assert times(unbounded, "refresh_end", "unavailable") == []
    bounded = sim.run(burst_scenario(make_scenario, 1), events=True)
    # at 360: one served, one waits, three shed at once
    assert times(bounded, "refresh_end", "unavailable")[:3] == [360.0] * 3
    assert times(bounded, "refresh_end", "ok")[:2] == [361.0, 362.0]


def test_simulated_clients_honour_retry_after(make_scenario):
    result = sim.run(burst_scenario(make_scenario, 1, retries=1), events=True)
    starts = times(result, "refresh_start")
    # the three shed at 360 come back after Retry-After (5 s, no jitter): one served, one waits,
    # one shed again and, out of retries, its requests fail
    assert starts[:5] == [360.0] * 5 and starts[5:8] == [365.0] * 3
    assert times(result, "refresh_end", "unavailable")[:4] == [360.0] * 3 + [365.0]
    row = result.replications.iloc[0]
    no_retry = sim.run(burst_scenario(make_scenario, 1), events=False).replications.iloc[0]
    assert row["failed_requests"] < no_retry["failed_requests"]


STORM = Path(__file__).parent / "data" / "server-storm.toml"
WORKERS, SERVICE_S, QUEUE_LIMIT = 2, 0.1, 4  # capacity 20 refreshes/s; see server-storm.toml
RATE_PER_S, SECONDS = 40, 3  # offered: twice the capacity, 120 refreshes


@pytest.mark.loadtest
@pytest.mark.timeout(120)
def test_storm_at_twice_capacity_sheds_with_retry_after_and_the_ledger_matches():
    with serve_in_subprocess(STORM, "plain") as url, httpx.Client(base_url=url, timeout=30) as client:
        grant = client.post(p.LOGIN_PATH, data={p.USERNAME_FIELD: "ann", p.PASSWORD_FIELD: p.TEST_PASSWORD}).json()
        before = client.get(p.LEDGER_PATH).json()
        answers: list[tuple[int, float, str | None]] = []
        lock = threading.Lock()
        ready = threading.Barrier(RATE_PER_S + 1)
        start = [0.0]

        def sender(k: int) -> None:
            # one connected client per slot; slot k sends at k/RATE, 1 + k/RATE, ... (open loop
            # overall: 40 arrivals a second whatever the answers)
            with httpx.Client(base_url=url, timeout=30) as own:
                own.get(p.PING_PATH)
                ready.wait()
                for j in range(SECONDS):
                    delay = start[0] + j + k / RATE_PER_S - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    sent = time.perf_counter()
                    answer = own.post(p.TOKEN_PATH, data={p.GRANT_TYPE_FIELD: p.REFRESH_GRANT,
                                                          p.REFRESH_TOKEN_FIELD: grant["refresh_token"]})
                    with lock:
                        answers.append((answer.status_code, time.perf_counter() - sent,
                                        answer.headers.get("retry-after")))

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(RATE_PER_S)]
        for thread in threads:
            thread.start()
        start[0] = time.perf_counter() + 0.2
        ready.wait()
        for thread in threads:
            thread.join(60)
        after = client.get(p.LEDGER_PATH, params={"records": 1}).json()

    statuses = [s for s, _, _ in answers]
    ok = sorted(latency for s, latency, _ in answers if s == 200)
    shed = [(latency, retry) for s, latency, retry in answers if s == 503]
    assert len(answers) == RATE_PER_S * SECONDS and set(statuses) <= {200, 503}
    assert shed and all(retry is not None and retry.isdecimal() and int(retry) >= 1 for _, retry in shed)
    # a call waited for at most QUEUE_LIMIT calls ahead of it on WORKERS workers: the tier's own
    # waits stay under that bound (plus event-loop slack; the clients' latencies also carry the
    # host's scheduling, which a busy host stretches without bound)
    bound_s = QUEUE_LIMIT / WORKERS * SERVICE_S + 0.1
    longest_wait_s = max(wait_ms for _, wait_ms in after["auth"]["queue_waits"]) / 1000
    assert longest_wait_s < bound_s, (longest_wait_s, bound_s)
    p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))]
    # the ledger counts exactly what the clients saw
    totals = {k: after["totals"][k] - before["totals"][k] for k in after["totals"]}
    assert totals["refresh_calls"] == len(ok) == totals["renewal_access_mints"]
    assert after["auth"]["unavailable"] - before["auth"]["unavailable"] == len(shed)
    print(f"storm: {len(answers)} refreshes at {RATE_PER_S}/s against capacity {WORKERS / SERVICE_S:.0f}/s: "
          f"{len(ok)} answered (p50 {statistics.median(ok) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"longest queue wait {longest_wait_s * 1000:.0f} ms, bound {bound_s * 1000:.0f} ms), {len(shed)} shed with Retry-After "
          f"(median {statistics.median(l for l, _ in shed) * 1000:.0f} ms)")


SHED = Path(__file__).parent / "data" / "loadtest-shed.toml"


@pytest.mark.slow
@pytest.mark.loadtest
@pytest.mark.timeout(180)
def test_locust_clients_honour_retry_after_with_jitter(tmp_path):
    """Real Locust users against the real server: a shed refresh is tried again no sooner than the
    Retry-After (20 scenario s, 2 wall s at time scale 10) and no later than its jittered bound.
    Locust is stopped (gracefully: it writes its records) once the server's clock is well past the
    retries of the first refresh storm, however long the machine took to get there."""
    import signal
    import subprocess
    import sys

    from loadtests.cli import LOCUSTFILE
    from loadtests.measure import Records
    from tests.conftest import poll_until

    scale = 10.0
    records = tmp_path / "records"
    with serve_in_subprocess(SHED, "honouring", scale) as url, open(tmp_path / "locust.log", "w+") as log:
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "-u", "10",
             "-r", "10", "--run-time", "60s", "--scenario", str(SHED), "--strategy", "honouring",
             "--time-scale", str(scale), "--records-dir", str(records), "--only-summary",
             "--exit-code-on-error", "0"], stdout=log, stderr=subprocess.STDOUT)
        try:
            def ledger() -> dict:
                return httpx.get(url + p.LEDGER_PATH, timeout=10).json()

            # the storm (at 100 scenario s) has shed refreshes; their retries come within 30 s
            # (Retry-After 20 s, jitter up to x1.5) and take 5 s
            shed_at_s = poll_until(lambda: (seen := ledger())["auth"]["unavailable"] > 0 and seen["scenario_time_s"],
                                   90, "the first refresh storm shedding")
            poll_until(lambda: locust.poll() is not None or ledger()["scenario_time_s"] >= shed_at_s + 45, 90,
                       "the shed refreshes' retries")
            locust.send_signal(signal.SIGTERM)
            locust.wait(timeout=60)
        finally:
            if locust.poll() is None:
                locust.kill()
        log.seek(0)
        assert locust.returncode == 0, log.read()[-3000:]
        unavailable = ledger()["auth"]["unavailable"]
    client = Records(records).client
    refreshes = client[client["event"].isin(["refresh_start", "refresh_end"])].sort_values("t_s")
    waits = []
    for _, rows in refreshes.groupby("user"):
        rows = rows.reset_index(drop=True)
        for i in range(len(rows) - 1):
            if rows.loc[i, "event"] == "refresh_end" and rows.loc[i, "outcome"] == "unavailable" \
                    and rows.loc[i + 1, "event"] == "refresh_start":
                waits.append(rows.loc[i + 1, "t_s"] - rows.loc[i, "t_s"])
    shed = int((refreshes["outcome"] == "unavailable").sum())
    assert shed > 0 and unavailable >= shed
    assert waits, "a shed refresh should have been tried again"
    # a user's flows are 100 s apart, so a start within 60 s of a shed refresh is its retry: after
    # the 20 s Retry-After stretched by up to 1.5, with a little scheduling slack (scenario s)
    retries = [w for w in waits if w < 60]
    assert retries and min(retries) >= 20 - 1.0 and max(retries) <= 30 + 5.0, sorted(waits)
    waits = retries
    print(f"Locust: {shed} refreshes shed; retried after {min(waits):.1f}-{max(waits):.1f} scenario s "
          f"(Retry-After 20 s, jitter up to x1.5)")


@pytest.mark.slow
@pytest.mark.loadtest
@pytest.mark.timeout(180)
def test_prediction_and_measurement_agree_under_a_storm(cli, tmp_path):
    """``refreshlab validate scenarios/storm.toml``: a refresh storm at about twice the auth tier's
    capacity, simulated and measured against the reference server on 127.0.0.1. The shed
    refreshes, their retries after Retry-After, the requests that failed when the retry was shed
    too, the refresh calls and forced logins agree (the measurement differs from the replay of its
    users no more than two independent simulated runs differ at 95%); answered auth calls
    wait less than the queue bound in both worlds; the server's ledger counts what the clients saw."""
    import json

    import pandas as pd

    from tests.conftest import SCENARIOS

    out = tmp_path / "storm"
    code, stdout, err = cli("validate", SCENARIOS / "storm.toml", "--time-scale", "8", "--out", out, "--json")
    assert code in (0, 1), err[-3000:]
    report = json.loads(stdout)
    checks = {c["metric"]: c for c in report["checks"]}
    shed = ["refresh_calls", "unavailable_refreshes", "retried_refreshes", "failed_requests", "forced_logins",
            "auth_queue_wait_ms_p99"]
    lines = [f"{m}: simulated {checks[m]['simulated_mean']:.1f} ±{checks[m]['simulated_ci95'] or 0:.1f} "
             f"(same users {checks[m]['simulated']:.0f}), measured {checks[m]['measured']:.0f}"
             for m in shed]
    print("storm validate:\n  " + "\n  ".join(lines))
    assert all(checks[m]["agree"] for m in shed), "\n".join(lines)
    assert report["agree"], [c for c in report["checks"] if c["agree"] is False]
    # the storm happened in both worlds: refreshes shed, retried after Retry-After, and requests
    # failed when the retry was shed too
    for world in ("simulated", "measured"):
        assert checks["unavailable_refreshes"][world] > 0 and checks["retried_refreshes"][world] > 0, world
        assert checks["failed_requests"][world] > 0, world
    # the ledger counts what the clients saw: every refresh answered 200 is one renewal mint
    events = pd.read_parquet(out / "measured-shed_and_retry" / "events.parquet")
    events = events[events["t_s"] >= 0]  # not the preflight's calls, made before the users start
    answered = ((events["event"] == "refresh_end") & (events["outcome"] == "ok")).sum()
    minted = ((events["event"] == "mint") & (events["outcome"] == "access_refresh")).sum()
    assert answered == minted > 0
