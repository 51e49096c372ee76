"""Measuring third-party token servers: real simplejwt (PyPI) and node-oidc-provider (npm)
started on 127.0.0.1, driven by ``refreshlab loadtest`` with their bundled target profiles.

The measured counts must equal the servers' own records exactly: simplejwt's database rows
(OutstandingToken: every refresh token issued; BlacklistedToken: every one revoked) and its
request log (every refresh call); oidc-provider's own events. The preflight's calls (as user
number ``users``, written to run.json) are in those records too and are taken out.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.peers.servers import node_available, oidc_provider_server, simplejwt_server

pytestmark = [pytest.mark.loadtest, pytest.mark.peers, pytest.mark.timeout(300)]

SCENARIO = Path(__file__).parent / "data" / "peer-small.toml"
REFRESHLAB = Path(sys.executable).with_name("refreshlab")
USERS = 10


def loadtest(out: Path, strategy: str, url: str, profile: str, *extra: str):
    import subprocess

    command = [str(REFRESHLAB), "loadtest", str(SCENARIO), "--strategy", strategy, "--target", url,
               "--target-profile", profile, "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=240)


def measured(out: Path) -> tuple[dict, pd.DataFrame]:
    run = json.loads((out / "run.json").read_text())
    return run, pd.read_parquet(out / "events.parquet")


def count(events: pd.DataFrame, event: str, prefix: str = "") -> int:
    rows = events[events["event"] == event]
    return int(rows["outcome"].astype(str).str.startswith(prefix).sum()) if prefix else len(rows)


@pytest.mark.parametrize("rotate", [True, False], ids=["rotation+blacklist", "no-rotation"])
def test_simplejwt_counts_equal_the_servers_records(tmp_path, rotate):
    profile = "simplejwt-blacklist" if rotate else "simplejwt"
    with simplejwt_server(tmp_path / "server", rotate=rotate, access_s=10, users=USERS + 1) as server:
        done = loadtest(tmp_path / "run", "dual_token", server.url, profile)
        assert done.returncode == 0, done.stdout + done.stderr
    run, events = measured(tmp_path / "run")
    assert run["status"] == "complete" and run["partial"] is False
    assert "access token: JWT" in "\n".join(run["preflight"])
    counters = run["client_counters"]
    preflight_user = f"user-{run['preflight_user']}"
    log = server.request_log()
    refresh_calls = sum(1 for m, p, _ in log if m == "POST" and p == "/api/token/refresh/")
    refresh_calls -= run["preflight_calls"]["refresh"]
    logins = sum(1 for m, p, s in log if p == "/api/token/" and s == 200) - run["preflight_calls"]["login"]
    # refresh calls: the client's records and counters against the server's request log
    assert count(events, "refresh_start") == counters["refresh_calls"] == refresh_calls > 0
    assert count(events, "login") == logins
    # refresh-token mints (logins and rotations) against OutstandingToken rows
    mints = count(events, "mint", "refresh_")
    assert mints == counters["refresh_mints"] == server.refresh_tokens_issued(excluding_user=preflight_user)
    # revocations (every rotated token is blacklisted) against BlacklistedToken rows
    revoked = server.blacklisted(excluding_user=preflight_user)
    assert counters.get("rotated_tokens", 0) == revoked
    if rotate:
        assert count(events, "mint", "refresh_refresh") > 0 and revoked > 0
    else:
        assert count(events, "mint", "refresh_refresh") == 0 and revoked == 0
    # expiry 401s are classified from simplejwt's own words ("Token is expired")
    assert count(events, "attempt", "expired") > 0
    assert (tmp_path / "run" / "locust.log").is_file()


@pytest.mark.skipif(not node_available(), reason="oidc-provider is installed by .ci/run (npm ci in tests/peers/oidc-provider)")
# the single-flight variant counts through the same paths with fewer races: with the fidelity runs,
# to keep the CI's second pass short
@pytest.mark.parametrize("strategy", ["dual_token", pytest.param("dual_token_single_flight", marks=pytest.mark.fidelity)])
def test_oidc_provider_counts_equal_its_events(tmp_path, strategy):
    # no clock tolerance: in a 24-second run the 10-second tokens must really expire
    with oidc_provider_server(tmp_path / "server", access_s=10, clock_tolerance_s=0) as server:
        done = loadtest(tmp_path / "run", strategy, server.url, "oidc-provider")
        assert done.returncode == 0, done.stdout + done.stderr
    run, events = measured(tmp_path / "run")
    assert run["status"] == "complete" and run["partial"] is False
    assert "access token: opaque" in "\n".join(run["preflight"])
    counters = run["client_counters"]
    preflight_user = f"user-{run['preflight_user']}"
    records = [r for r in server.records() if r.get("account") != preflight_user]
    refresh_grants = [r for r in server.records() if r["event"] in ("grant.success", "grant.error")
                      and r.get("grant_type") == "refresh_token"]
    # every refresh call reached the token endpoint's outcome events
    assert count(events, "refresh_start") == counters["refresh_calls"] == \
        len(refresh_grants) - run["preflight_calls"]["refresh"] > 0
    # logins: code exchanges
    exchanges = [r for r in records if r["event"] == "grant.success" and r["grant_type"] == "authorization_code"]
    assert count(events, "login") == len(exchanges)
    # refresh-token and access-token mints (opaque strings the client had not seen) against saves
    assert count(events, "mint", "refresh_") == counters["refresh_mints"] == \
        sum(r["event"] == "refresh_token.saved" for r in records)
    assert count(events, "mint", "access_") == counters["access_mints"] == \
        sum(r["event"] == "access_token.saved" for r in records)
    # revocations: grants (refresh-token families) revoked after a reuse, one per session
    revoked = {r["grant"] for r in records if r["event"] == "grant.revoked"}
    assert counters.get("refused_sessions", 0) == len(revoked)
    if strategy == "dual_token":
        assert revoked, "concurrent refreshes of one token should have been caught as reuse"
    # reuse detections (one per rotated token refused, inferred: its answers do not say) against
    # the server's own "refresh token already used" errors
    assert count(events, "reuse_detected") == sum(
        1 for r in server.records() if r["event"] == "grant.error" and r.get("detail") == "refresh token already used")
    assert count(events, "attempt", "expired") > 0


# -- fidelity: minutes-long validate runs (pytest -m fidelity, run by .ci/run) -----------------

PEERS_SCENARIO = Path(__file__).parents[1] / "scenarios" / "peers.toml"


def validate(out: Path, url: str, profile: str):
    import subprocess

    command = [str(REFRESHLAB), "validate", str(PEERS_SCENARIO), "--target-profile", profile, "--target", url,
               "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800)


def check_exact_simplejwt(out: Path, server) -> None:
    """Over the three variants (one server, one database): refresh calls against its request
    log, refresh-token mints against OutstandingToken rows, revocations against BlacklistedToken
    rows (the preflight's calls and user taken out)."""
    log = server.request_log()
    folders = sorted(out.glob("measured-*"))
    assert len(folders) == 3
    calls = sum(1 for m, p, _ in log if m == "POST" and p == "/api/token/refresh/")
    runs = [measured(f) for f in folders]
    preflight_calls = sum(run["preflight_calls"]["refresh"] for run, _ in runs)
    assert sum(run["client_counters"]["refresh_calls"] for run, _ in runs) == calls - preflight_calls
    preflight_users = {f"user-{run['preflight_user']}" for run, _ in runs}
    (user,) = preflight_users
    assert sum(run["client_counters"]["refresh_mints"] for run, _ in runs) == server.refresh_tokens_issued(user)
    assert sum(run["client_counters"].get("rotated_tokens", 0) for run, _ in runs) == server.blacklisted(user)


def check_exact_oidc_provider(out: Path, server) -> None:
    """Per variant (the server's events split at each load test's start, the preflight's user
    taken out): refresh calls against the token endpoint's refresh outcomes, refresh- and
    access-token mints against its saves, revocations (grants revoked after a reuse) against
    ``grant.revoked``, reuse detections against its "refresh token already used" errors."""
    runs = sorted((measured(f) for f in out.glob("measured-*")), key=lambda r: r[0]["t0_unix_s"])
    assert len(runs) == 3
    records = server.records()
    for run, events in runs:
        preflight_user, start = f"user-{run['preflight_user']}", run["t0_unix_s"]
        # up to the next variant's preflight (its forged refresh token names no account)
        end = min((r["t"] for r in records if r["t"] > start and r.get("account") == preflight_user), default=math.inf)
        mine = [r for r in records if start <= r["t"] < end and r.get("account") != preflight_user]
        counters = run["client_counters"]
        refresh_grants = [r for r in mine if r["event"] in ("grant.success", "grant.error")
                          and r.get("grant_type") == "refresh_token"]
        assert counters["refresh_calls"] == count(events, "refresh_start") == len(refresh_grants) > 0
        assert counters["refresh_mints"] == sum(r["event"] == "refresh_token.saved" for r in mine)
        assert counters["access_mints"] == sum(r["event"] == "access_token.saved" for r in mine)
        assert counters.get("refused_sessions", 0) == len({r["grant"] for r in mine if r["event"] == "grant.revoked"})
        assert count(events, "reuse_detected") == sum(
            1 for r in mine if r["event"] == "grant.error" and r.get("detail") == "refresh token already used")


def check_every_check_agrees(out: Path, title: str) -> None:
    rows = pd.read_csv(out / "validation.csv")
    print(f"\n{title}\n" + (out / "validation.md").read_text())
    assert set(rows["strategy"]) == {"dual_token", "dual_token_single_flight", "silent_refresh"}
    checks = rows.dropna(subset=["agree"])
    assert checks["agree"].astype(bool).all(), checks[~checks["agree"].astype(bool)].to_string()


@pytest.mark.fidelity
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("rotate", [True, False], ids=["rotation+blacklist", "no-rotation"])
def test_validate_against_simplejwt(tmp_path, rotate):
    profile = "simplejwt-blacklist" if rotate else "simplejwt"
    with simplejwt_server(tmp_path / "server", rotate=rotate, access_s=30, users=41) as server:
        done = validate(tmp_path / "v", server.url, profile)
    assert done.returncode in (0, 1), done.stderr
    check_exact_simplejwt(tmp_path / "v", server)
    check_every_check_agrees(tmp_path / "v", profile)
    if rotate:
        # racing refreshes: the server lets some concurrent replays through (duplicates) and catches
        # others (reuse); the measured race window reproduces both in the simulation
        racy = pd.read_csv(tmp_path / "v" / "validation.csv").query("strategy == 'dual_token'").set_index("metric")
        for metric in ("reuse_detections", "duplicate_tokens"):
            assert racy.loc[metric, "simulated"] > 0 and racy.loc[metric, "measured"] > 0, racy.to_string()
        assert "race_window = " in (tmp_path / "v" / "race_window.toml").read_text()
    assert done.returncode == 0


@pytest.mark.fidelity
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not node_available(), reason="oidc-provider is installed by .ci/run (npm ci in tests/peers/oidc-provider)")
def test_validate_against_oidc_provider(tmp_path):
    with oidc_provider_server(tmp_path / "server", access_s=30, clock_tolerance_s=0) as server:
        done = validate(tmp_path / "v", server.url, "oidc-provider")
    assert done.returncode in (0, 1), done.stderr
    check_exact_oidc_provider(tmp_path / "v", server)
    check_every_check_agrees(tmp_path / "v", "oidc-provider")
    # one event loop answers in order: validate told the simulation so
    assert "in_order = true" in (tmp_path / "v" / "simulated-dual_token" / "scenario.resolved.toml").read_text()
    assert done.returncode == 0
