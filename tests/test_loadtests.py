"""Load tests against the real reference server with real Locust, on 127.0.0.1.

Each test starts uvicorn and Locust as child processes and stays within 20 users and about a
minute; ``pytest -m loadtest`` runs only these, ``-m 'not loadtest'`` skips them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loadtests.cli import LOCUSTFILE
from loadtests.measure import Records, fetch_ledger
from loadtests.server.process import serve_in_subprocess
from sim.metrics import EVENT_COLUMNS, SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from sim.results import load_run
from tests.conftest import strict_json

pytestmark = [pytest.mark.loadtest, pytest.mark.timeout(180)]

SCENARIO = Path(__file__).parent / "data" / "loadtest-small.toml"
TIME_SCALE = 60.0  # the 10-minute scenario takes 10 wall seconds
RUN_TIME = "12s"
REFRESHLAB = Path(sys.executable).with_name("refreshlab")


def locust(url: str, strategy: str, records: Path, *extra: str, users: int = 12) -> subprocess.CompletedProcess:
    """Run the project's locustfile headless against ``url``; returns the finished process."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
               "-u", str(users), "-r", str(users), "--run-time", RUN_TIME, "--scenario", str(SCENARIO),
               "--strategy", strategy, "--time-scale", str(TIME_SCALE), "--records-dir", str(records),
               "--only-summary", "--exit-code-on-error", "0", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_headless_locust_races_without_single_flight_and_not_with_it(tmp_path):
    totals = {}
    for strategy in ("dual_token", "dual_token_single_flight"):
        records = tmp_path / strategy
        with serve_in_subprocess(SCENARIO, strategy, TIME_SCALE) as url:
            done = locust(url, strategy, records)
            assert done.returncode == 0, done.stderr[-3000:]
            ledger = fetch_ledger(url)
        measured = Records(records)
        client = measured.client
        assert {"login", "request", "attempt", "refresh_start", "refresh_end", "mint"} <= set(client["event"])
        assert (client.loc[client["event"] == "request", "outcome"] == "ok").all()
        # Locust's own rows: login and refresh under their own names
        types = set(zip(measured.locust["request_type"], measured.locust["name"]))
        assert {("login", "/login"), ("refresh", "/token"), ("GET", "/api/items")} <= types
        client_duplicates = client["outcome"].str.endswith("_duplicate", na=False).sum()
        totals[strategy] = (ledger["totals"], int(client_duplicates), measured.counters)
    races, _, counters = totals["dual_token"]
    assert races["renewal_access_mints"] > 0
    assert races["duplicate_tokens"] > 0
    # the client's count by basis sees the same duplicates as the server's ledger
    assert totals["dual_token"][1] == races["duplicate_tokens"] == counters["duplicate_tokens"]
    calm, calm_client, _ = totals["dual_token_single_flight"]
    assert calm["renewal_access_mints"] > 0
    assert calm["duplicate_tokens"] == 0 and calm_client == 0
    # single flight: one refresh per expiry instead of one per request of the burst
    assert calm["refresh_calls"] < races["refresh_calls"]


@pytest.mark.slow
def test_loadtest_command_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    html = tmp_path / "locust.html"
    done = subprocess.run([str(REFRESHLAB), "loadtest", str(SCENARIO), "--strategy", "sliding",
                           "--time-scale", str(TIME_SCALE), "--users", "8", "--duration", "8m", "--out", str(out),
                           "--html", str(html), "--json", "--fail-on", "requests < 1", "--fail-on", "failed_requests > 0"],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = strict_json(done.stdout)
    assert printed["gates"]["passed"] is True and printed["summary"][0]["strategy"] == "sliding"
    assert json.loads((out / "gates.json").read_text())["passed"] is True
    assert "<html" in html.read_text().lower()  # Locust's own report, passed through
    html.unlink()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # no temporary folder left over
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert list(pd.read_parquet(out / "timeseries.parquet").columns) == TIMESERIES_COLUMNS
    assert list(pd.read_parquet(out / "events.parquet").columns) == EVENT_COLUMNS
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "measured" and meta["partial"] is False and meta["mints_from"] == "server"
    run = load_run(out)
    row = run.aggregate.loc["sliding"]
    assert row["users"] == 8 and row["window_s"] == 480
    assert row["requests"] > 0 and row["refresh_calls"] == 0  # sliding: no refresh endpoint
    assert row["refresh_rate_per_s"] > 0 and row["failed_requests"] == 0
    assert (out / "locust_requests.parquet").is_file() and (out / "locust_stats.csv").is_file()


@pytest.mark.slow
def test_distributed_run_brings_worker_counters_to_the_master(tmp_path):
    records = tmp_path / "records"
    with serve_in_subprocess(SCENARIO, "dual_token", TIME_SCALE) as url:
        done = locust(url, "dual_token", records, "--processes", "2")
        ledger = fetch_ledger(url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refreshlab counters:" in done.stderr
    metas = [json.loads(f.read_text()) for f in records.glob("meta-*.json")]
    assert sorted(m["role"] for m in metas) == ["master", "worker", "worker"]
    assert len({m["t0_unix_s"] for m in metas}) == 1  # one clock for every process
    counters = json.loads((records / "counters.json").read_text())
    assert counters["role"] == "master"
    worker_sums = {k: sum(m["counters"].get(k, 0) for m in metas if m["role"] == "worker") for k in counters if k != "role"}
    assert {k: v for k, v in counters.items() if k != "role"} == worker_sums
    assert counters["logins"] == 12 and counters["requests"] > 0
    assert counters["duplicate_tokens"] == ledger["totals"]["duplicate_tokens"] > 0
    users = Records(records).client["user"].unique()
    assert sorted(users) == list(range(12))  # each scenario user exactly once across workers


def test_loadtest_refuses_an_unknown_strategy_without_a_traceback(cli):
    code, _, err = cli("loadtest", SCENARIO, "--strategy", "nope")
    assert code == 2
    assert "no strategy 'nope'" in err and "Traceback" not in err


@pytest.mark.slow
def test_interrupted_loadtest_writes_what_it_measured_marked_partial(tmp_path):
    import signal
    import urllib.request

    from tests.conftest import poll_until
    from tests.test_faults import children

    out = tmp_path / "run"
    proc = subprocess.Popen([str(REFRESHLAB), "loadtest", str(SCENARIO), "--strategy", "dual_token",
                             "--time-scale", str(TIME_SCALE), "--users", "6", "--duration", "30m", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait for states, not for a guessed time: Locust runs, its 6 users have logged in, and a
    # scenario minute of requests has passed on the server's clock
    procs = poll_until(lambda: children(proc), what="server and Locust running")
    command = procs["server"].cmdline()
    ledger_url = f"http://127.0.0.1:{command[command.index('--port') + 1]}/ledger"

    def busy() -> bool:
        ledger = json.loads(urllib.request.urlopen(ledger_url, timeout=10).read())
        return ledger["totals"]["sessions"] >= 6 and ledger["scenario_time_s"] >= 120

    poll_until(busy, what="users logged in and making requests")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "measured" and meta["partial"] is True
    run = load_run(out)
    assert run.partial and run.aggregate.loc["dual_token", "requests"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
