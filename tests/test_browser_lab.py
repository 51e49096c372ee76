"""The browser lab (``refreshlab browser``): merging the browser's and the server's views into
one events table, exactly; bad input; and (marked ``browser``, run by .ci/run) real runs of both
SDKs in headless Chromium against oidc-provider, whose counts must equal the server's own log."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from loadtests.browser_lab import LabRun, LabSettings, lab_ready, lab_result, lab_scenario, merge, schedule
from sim.results import load_run
from sim.scenario import load_scenario
from tests.conftest import poll_until

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tests" / "data" / "browser-smoke.toml"
SCENARIO = ROOT / "scenarios" / "browser.toml"
T = 1_700_000_000.0


def _race_run() -> LabRun:
    """One user, two tabs, the hidden-tab collapse as the lab records it: tab 0 renews with R1;
    tab 1 presents R1 too 30 ms later (a same-token race); the server revokes the grant; tab 0's
    next renewal with R2 meets a revoked grant; both tabs are logged out."""
    call = dict(kind="token_call", user=0, error=None, error_description=None, expires_in=90)
    records = [
        {"t": T + 0.0, "kind": "login_start", "user": 0, "tab": 0},
        {**call, "t": T + 1.0, "t_end": T + 1.1, "tab": 0, "grant_type": "authorization_code", "presented": None,
         "status": 200, "received": "R1", "access": "A1"},
        {"t": T + 2.0, "kind": "start", "visibility": ["hidden", "visible"]},
        {"t": T + 3.0, "kind": "page_view", "user": 0, "tab": 0, "burst": 2, "tokenMs": 0, "access": "A1",
         "attempts": [{"t": T + 3.0, "status": 200, "ms": 5}, {"t": T + 3.0, "status": 200, "ms": 6}]},
        {**call, "t": T + 31.0, "t_end": T + 31.05, "tab": 0, "grant_type": "refresh_token", "presented": "R1",
         "status": 200, "received": "R2", "access": "A2"},
        {**call, "t": T + 31.03, "t_end": T + 31.06, "tab": 1, "grant_type": "refresh_token", "presented": "R1",
         "status": 400, "error": "invalid_grant", "error_description": "grant request is invalid", "received": None,
         "access": None},
        {"t": T + 31.07, "kind": "sdk", "what": "logged_out", "user": 0, "tab": 1},
        {"t": T + 40.0, "kind": "page_view", "user": 0, "tab": 0, "burst": 1, "tokenMs": 12, "access": "A2",
         "attempts": [{"t": T + 40.0, "status": 401, "ms": 5}]},
        {**call, "t": T + 61.0, "t_end": T + 61.02, "tab": 0, "grant_type": "refresh_token", "presented": "R2",
         "status": 400, "error": "invalid_grant", "error_description": "grant request is invalid", "received": None,
         "access": None},
        {"t": T + 61.03, "kind": "sdk", "what": "logged_out", "user": 0, "tab": 0},
        {"t": T + 62.0, "kind": "end", "visibility": ["hidden", "visible"]},
    ]
    server = [
        {"t": T + 1.05, "event": "access_token.saved", "jti": "A1", "grant": "G"},
        {"t": T + 1.05, "event": "refresh_token.saved", "jti": "R1", "grant": "G"},
        {"t": T + 1.06, "event": "grant.success", "grant_type": "authorization_code", "presented": None},
        {"t": T + 31.02, "event": "refresh_token.consumed", "jti": "R1", "grant": "G"},
        {"t": T + 31.02, "event": "refresh_token.saved", "jti": "R2", "grant": "G"},
        {"t": T + 31.02, "event": "access_token.saved", "jti": "A2", "grant": "G"},
        {"t": T + 31.03, "event": "grant.success", "grant_type": "refresh_token", "presented": "R1"},
        {"t": T + 31.05, "event": "grant.revoked", "grant": "G"},
        {"t": T + 31.05, "event": "grant.error", "grant_type": "refresh_token", "error": "invalid_grant",
         "detail": "refresh token already used", "presented": "R1"},
        {"t": T + 61.01, "event": "grant.error", "grant_type": "refresh_token", "error": "invalid_grant",
         "detail": "refresh token not found", "presented": "R2"},
    ]
    settings = LabSettings(sdk="oidc-client-ts", users=1, tabs=2, duration_s=60.0)
    return LabRun(settings, records, server, host={"cores": 2, "busy": False})


def test_merge_classifies_refusals_by_the_servers_reason():
    merged = merge(_race_run(), "oidc-client-ts")
    ev = merged.events
    got = [(round(r.t_s, 3), r.event, r.outcome, None if pd.isna(r.tab) else int(r.tab))
           for r in ev[ev["event"].isin(["login", "refresh_start", "refresh_end", "reuse_detected", "revoke"])].itertuples()]
    assert got == [
        (1.0, "login", "visit", 0),
        (31.0, "refresh_start", "", 0),
        (31.03, "refresh_start", "", 1),
        (31.05, "refresh_end", "ok", 0),
        (31.05, "revoke", "", None),
        (31.05, "reuse_detected", "", None),
        (31.06, "refresh_end", "reuse_detected", 1),
        (31.07, "login", "forced", 1),
        (61.0, "refresh_start", "", 0),
        (61.02, "refresh_end", "revoked", 0),
        (61.03, "login", "forced", 0),
    ]
    # the server's grant names the session of every row, the client's and the server's alike
    assert set(ev.loc[ev["event"] != "request", "session"].dropna()) == {"G"}
    # the 401 after the revocation is a refused token, not an expired one
    assert ev.loc[ev["event"] == "attempt", "outcome"].tolist() == ["ok", "ok", "invalid"]
    assert merged.agreement["exact"] and merged.agreement["reuse_detections"] == 1
    assert merged.agreement["lab"] == {"refresh_calls": 3, "refresh_ok": 1, "refresh_refused": 2, "code_exchanges": 1}
    b = merged.browser
    assert (b["refresh_calls"], b["refresh_ok"], b["invalid_grant"], b["same_token_races"], b["tabs_logged_out"]) == (3, 1, 2, 1, 2)
    assert math.isclose(b["race_gap_ms_max"], 30.0, abs_tol=1e-3)
    assert merged.tabs[["tab", "visibility", "refresh_calls", "invalid_grant"]].values.tolist() == [
        [0, "hidden", 2, 1], [1, "visible", 1, 1]]


def test_lab_result_counts_like_a_run_folder():
    scenario, _ = lab_scenario(load_scenario(SCENARIO), "oidc-client-ts", 1, 2, "60s", "browser.toml")
    result, merged, failure = lab_result(_race_run(), scenario, "oidc-client-ts")
    assert failure is None and not result.partial
    row = result.aggregate.loc["oidc-client-ts"]
    # window: from the start of page views (2 s) to the end (62 s)
    assert (row["refresh_calls"], row["reuse_detections"], row["forced_logins"]) == (3, 1, 2)
    assert (row["requests"], row["failed_requests"], row["expiry_failures"]) == (3, 1, 0)
    assert result.meta["server_agreement"]["exact"] and result.meta["browser"]["same_token_races"] == 1


def test_two_lab_runs_differ_in_what_they_ran_not_in_their_measured_windows():
    from sim.report.sweep import varied_fields

    scenario, _ = lab_scenario(load_scenario(SCENARIO), "oidc-client-ts", 1, 2, "60s", "browser.toml")
    plain, locked = _race_run(), _race_run()
    locked.settings.lock = True
    locked.records = [{**r, "t": r["t"] + 0.5} if r.get("kind") == "end" else r for r in locked.records]
    results = [lab_result(run, scenario, "oidc-client-ts")[0] for run in (plain, locked)]
    assert results[0].scenario.run.duration_s != results[1].scenario.run.duration_s
    client = results[1].scenario.variant("oidc-client-ts").client
    assert client.cross_tab_lock and client.single_flight and client.storage == "shared"
    assert {k.rsplit(".", 1)[-1] for k in varied_fields(results)} == {"single_flight", "cross_tab_lock", "storage"}


def test_a_server_record_missing_from_the_log_fails_the_run():
    run = _race_run()
    run.server = [e for e in run.server if e.get("presented") != "R2"]
    result, merged, failure = lab_result(run, lab_scenario(load_scenario(SCENARIO), "oidc-client-ts", 1, 2, "60s", "x")[0],
                                         "oidc-client-ts")
    assert not merged.agreement["exact"]
    assert failure is not None and "server's own log" in failure and result.partial


def _answered_after_the_end(unsettled: bool) -> LabRun:
    """The race run with one more renewal sent 0.5 s before the end: the server answers it after
    the lab's ``end`` record, and the lab records it while draining (or, ``unsettled``, never)."""
    run = _race_run()
    end = next(r for r in run.records if r["kind"] == "end")
    late = {"t": end["t"] - 0.5, "kind": "token_call", "user": 0, "tab": 0, "grant_type": "refresh_token",
            "presented": "R2", "error": "invalid_grant", "error_description": "grant request is invalid",
            "received": None, "access": None, "expires_in": None}
    run.server.append({"t": end["t"] + 0.023, "event": "grant.error", "grant_type": "refresh_token",
                       "error": "invalid_grant", "detail": "refresh token not found", "presented": "R2"})
    if unsettled:
        run.records += [{"t": end["t"] + 30.0, "kind": "unsettled", "user": 0, "tab": 0, "sent": 4, "recorded": 3},
                        {"t": end["t"] + 30.0, "kind": "drained", "unsettled": 1, "bound_s": 30.0}]
    else:
        run.records += [{**late, "t_end": end["t"] + 0.03, "status": 400},
                        {"t": end["t"] + 0.03, "kind": "drained", "unsettled": 0, "bound_s": 30.0}]
    return run


@pytest.mark.parametrize("unsettled", [False, True])
def test_a_call_in_flight_at_the_end_counts_once_answered_and_fails_the_run_if_never(unsettled):
    scenario = lab_scenario(load_scenario(SCENARIO), "oidc-client-ts", 1, 2, "60s", "x")[0]
    result, merged, failure = lab_result(_answered_after_the_end(unsettled), scenario, "oidc-client-ts")
    if unsettled:
        assert failure is not None and "not answered and recorded 30.0 s after the end" in failure and result.partial
        assert merged.agreement["server"]["refresh_calls"] == merged.agreement["lab"]["refresh_calls"] + 1
    else:
        assert failure is None and not result.partial and merged.agreement["exact"]
        assert merged.agreement["lab"]["refresh_calls"] == merged.agreement["server"]["refresh_calls"] == 4


def test_schedule_is_the_simulators_draws_per_tab():
    scenario, settings = lab_scenario(load_scenario(SCENARIO), "auth0-spa-js", 2, 3, "150s", "x")
    a, b = schedule(scenario, settings), schedule(scenario, settings)
    assert a == b and len(a) == 2 and len(a[0]) == 3
    assert a[0][0] != a[0][1]  # each tab its own stream
    for views in a[1]:
        assert sum(think for think, _ in views) >= 150.0
        assert all(1 <= burst <= 3 and think >= 0.5 for think, burst in views)


@pytest.mark.parametrize("args, message", [
    (["--tabs", "11"], "--tabs: expected 1 to 10"),
    (["--users", "0"], "--users: expected 1 to 10"),
    (["--duration", "5s"], "--duration: expected between 10s and 1h"),
    (["--duration", "soon"], "--duration"),
    (["--target-profile", "keycloak"], "--target-profile: the browser lab can log in"),
])
def test_bad_input_exits_2(cli, args, message):
    code, out, err = cli("browser", SCENARIO, "--sdk", "oidc-client-ts", *args)
    assert code == 2, err
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_too_short_access_tokens_exit_2(cli, tmp_path):
    scenario = tmp_path / "short.toml"
    scenario.write_text(SMOKE.read_text().replace('access_ttl = "70s"', 'access_ttl = "60s"'))
    code, out, err = cli("browser", scenario, "--sdk", "auth0-spa-js")
    assert code == 2
    assert "tokens.access_ttl: expected whole seconds between 61s and 1h" in " ".join(err.split())


def test_unknown_sdk_exits_2(cli):
    code, out, err = cli("browser", SCENARIO, "--sdk", "keycloak-js")
    assert code == 2 and "keycloak-js" in err


needs_lab = pytest.mark.skipif(not lab_ready(), reason="the lab's npm packages are installed by .ci/run "
                               "(npm ci in loadtests/browser)")


def _refreshlab(*args, env=None, timeout=400):
    exe = Path(sys.executable).with_name("refreshlab")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.mark.browser
@pytest.mark.loadtest  # scheduled first: the longest tests of the pass
@pytest.mark.timeout(400)
@needs_lab
@pytest.mark.parametrize("sdk", ["oidc-client-ts", "auth0-spa-js"])
def test_smoke_counts_equal_the_servers_own_log(sdk, tmp_path):
    out = tmp_path / "run"
    done = _refreshlab("browser", SMOKE, "--sdk", sdk, "--users", "1", "--tabs", "3", "--duration", "50s", "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    run = load_run(out)
    assert run.kind == "measured" and not run.partial
    calls = pd.read_parquet(out / "token_calls.parquet")
    server = [json.loads(line) for line in (out / "server_events.jsonl").read_text().splitlines()]
    grants = [e for e in server if e["event"] in ("grant.success", "grant.error")]
    # every token-endpoint call the browser made is one the server logged, and no other
    refresh = calls[calls["grant_type"] == "refresh_token"]
    assert len(refresh) == sum(e["grant_type"] == "refresh_token" for e in grants) > 0
    assert Counter(refresh["presented"]) == Counter(e["presented"] for e in grants if e["grant_type"] == "refresh_token")
    assert (refresh["status"] == 200).sum() == sum(e["event"] == "grant.success" and e["grant_type"] == "refresh_token" for e in grants)
    assert (refresh["error"] == "invalid_grant").sum() == sum(e["event"] == "grant.error" for e in grants)
    assert (calls["grant_type"] == "authorization_code").sum() == sum(e["grant_type"] == "authorization_code" for e in grants) == 1
    # the lab's own counts and its folder say the same
    tabs = pd.read_csv(out / "browser_tabs.csv")
    assert tabs["refresh_calls"].sum() == len(refresh) and len(tabs) == 3
    assert tabs["page_views"].sum() > 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["server_agreement"]["exact"] and meta["host"]["samples"] > 0 and meta["host"]["uptime_end"]
    ev = run.events
    assert (ev["event"] == "reuse_detected").sum() == sum(e["event"] == "grant.error" and "already used" in e["detail"] for e in grants)
    assert (ev["event"] == "revoke").sum() == sum(e["event"] == "grant.revoked" for e in server)


@pytest.mark.browser
@pytest.mark.loadtest
@pytest.mark.timeout(120)
@needs_lab
def test_a_browser_that_does_not_start_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    done = _refreshlab("browser", SMOKE, "--sdk", "oidc-client-ts", "--tabs", "1", "--duration", "10s", "--out", out,
                       env={"REFRESHLAB_CHROMIUM": "/bin/false"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing was measured" in " ".join(done.stderr.split())
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.browser
@pytest.mark.loadtest
@pytest.mark.timeout(200)
@needs_lab
def test_a_renewal_in_flight_at_the_end_is_waited_for_and_counted(tmp_path):
    # 70 s tokens: the tab renews at its poll 10 s after loading; the provider holds the answer
    # back 5 s, so the renewal is still in flight when the 12 s of page views end
    out, scenario = tmp_path / "run", tmp_path / "smoke.toml"
    scenario.write_text(SMOKE.read_text().replace('{ dist = "exponential", mean = "10s" }', '"3s"'))
    done = _refreshlab("browser", scenario, "--sdk", "oidc-client-ts", "--tabs", "1", "--duration", "12s", "--out", out,
                       env={"LAB_REFRESH_ANSWER_DELAY_MS": "5000"})
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["server_agreement"]["exact"] and meta["server_agreement"]["lab"]["refresh_calls"] == 1
    records = [json.loads(line) for line in (out / "browser_records.jsonl").read_text().splitlines()]
    end = next(r["t"] for r in records if r["kind"] == "end")
    renewal = next(r for r in records if r["kind"] == "token_call" and r["grant_type"] == "refresh_token")
    drained = next(r for r in records if r["kind"] == "drained")
    assert renewal["t"] < end < renewal["t_end"] <= drained["t"] and drained["unsettled"] == 0


@pytest.mark.browser
@pytest.mark.loadtest
@pytest.mark.timeout(200)
@needs_lab
def test_a_provider_that_dies_mid_run_marks_the_run_partial(tmp_path):
    import signal

    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("refreshlab")
    cli = subprocess.Popen([str(exe), "browser", str(SMOKE), "--sdk", "oidc-client-ts", "--tabs", "1", "--duration",
                            "60s", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    work = tmp_path / f".run.lab-{cli.pid}"
    try:
        # the page views have begun (the lab's own progress line): the provider goes away
        def running() -> bool:
            assert cli.poll() is None, cli.communicate()
            return (work / "lab.log").is_file() and "lab: running" in (work / "lab.log").read_text()

        poll_until(running, 150, "the lab's page views")
        os.kill(int((work / "provider.pid").read_text()), signal.SIGKILL)
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 1, stdout + stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["partial"] and "the provider exited" in meta["failure"]
    assert not work.exists()


def test_the_simulated_setup_is_the_labs():
    from loadtests.browser_lab import simulated_scenario, tab_gap_s

    run = _race_run()
    run.records += [{"t": T + 1.2, "kind": "tab_open", "user": 0, "tab": 0},
                    {"t": T + 1.5, "kind": "tab_open", "user": 0, "tab": 1}]
    run.settings.throttling = "chrome"
    assert tab_gap_s(run) == pytest.approx(0.3)
    predicted = simulated_scenario(load_scenario(SCENARIO), run, "oidc-client-ts")
    variant = predicted.variant("oidc-client-ts")
    assert variant.client.preset == "oidc-client-ts-localstorage" and variant.client.wake_up_s == 1.0
    assert variant.client.timer_phase == "poll" and variant.client.storage == "copied"
    assert predicted.population.tab_opening_gap_s == pytest.approx(0.3)
    assert predicted.population.tab_opening_offsets_s == [pytest.approx(0.3)]
    assert (predicted.population.users, predicted.population.tabs.mean) == (1, 2)
    assert predicted.run.duration_s == pytest.approx(62.0 - 1.1) and predicted.run.warmup_s == 0


def test_browser_checks_refresh_calls_within_10_percent_and_whether_races_and_logouts_occur():
    from loadtests.browser_lab import compare_browser

    # races in one replication of three: likely but not rare either way
    simulated = pd.DataFrame({"refresh_calls": [21, 20, 22], "same_token_races": [0, 0, 1],
                              "tabs_logged_out": [0, 0, 2], "refused_refreshes": [0, 0, 3],
                              "users_logged_out": [0, 0, 1]})
    rows = compare_browser(simulated, {"refresh_calls": 20, "same_token_races": 0, "tabs_logged_out": 0,
                                       "refused_refreshes": 0, "users_logged_out": 0, "users": 1}).set_index("metric")
    # refresh calls among the replications without a race, as the lab had none: 20.5 against 20
    assert rows.loc["refresh_calls", "agrees"] and rows.loc["refresh_calls", "relative_difference"] == pytest.approx(0.025)
    assert rows.loc["refresh_calls", "replications"] == 2
    assert rows.loc["same_token_races", "simulated_share"] == pytest.approx(1 / 3)
    assert rows.loc["same_token_races", "agrees"] and rows.loc["tabs_logged_out", "agrees"]
    assert rows.loc["refused_refreshes", "agrees"] is None
    # a race in the lab is one draw of an outcome a third of the replications had: it agrees
    raced = compare_browser(simulated, {"refresh_calls": 5, "same_token_races": 2, "tabs_logged_out": 2,
                                        "refused_refreshes": 3, "users_logged_out": 1, "users": 1}).set_index("metric")
    assert raced.loc["same_token_races", "agrees"] and raced.loc["tabs_logged_out", "agrees"]
    # an outcome under 10% of the replications is not: none of 11 had a race
    never = pd.concat([simulated.iloc[:2]] * 6, ignore_index=True).iloc[:11]
    off = compare_browser(never, {"refresh_calls": 30, "same_token_races": 2, "tabs_logged_out": 3,
                                  "refused_refreshes": 3, "users_logged_out": 1, "users": 1}).set_index("metric")
    assert not off.loc["refresh_calls", "agrees"] and not off.loc["same_token_races", "agrees"]
    assert not off.loc["tabs_logged_out", "agrees"]
    # one user is too few to refute a probability of 1/3 (exact interval 2.5%-100%), not 0
    assert raced.loc["users_logged_out", "agrees"] and not off.loc["users_logged_out", "agrees"]
    # a renewal due in the run's last second: 5 calls in 6 replications of 20, 4 in the rest; a
    # lab run with 5 (25% from replication 0 and from the mean 4.3 ±0.22) is one more draw
    edge = pd.DataFrame({"refresh_calls": [4] * 14 + [5] * 6, "same_token_races": 0, "tabs_logged_out": 0,
                         "refused_refreshes": 0, "users_logged_out": 0})
    lab = {"same_token_races": 0, "tabs_logged_out": 0, "refused_refreshes": 0, "users_logged_out": 0, "users": 1}
    assert compare_browser(edge, {**lab, "refresh_calls": 5}).set_index("metric").loc["refresh_calls", "agrees"]
    assert not compare_browser(edge, {**lab, "refresh_calls": 6}).set_index("metric").loc["refresh_calls", "agrees"]


def test_the_share_of_users_logged_out_against_the_simulated_probability_with_an_exact_interval():
    from loadtests.browser_lab import users_logged_out_check

    # 5 users per replication, 2 logged out in each: p = 0.4
    simulated = pd.DataFrame({"users_logged_out": [2, 2, 2, 2]})
    # 0 of 5 measured: the exact 95% interval is [0, 52%], which holds 0.4
    row = users_logged_out_check(simulated, {"users": 5, "users_logged_out": 0})
    assert row["simulated_share"] == pytest.approx(0.4) and row["agrees"]
    assert (row["measured_share_low"], row["measured_share_high"]) == (0.0, pytest.approx(0.5218, abs=1e-4))
    # 0 of 15 ([0, 21.8%]) or 15 of 15 ([78.2%, 1]) does not
    assert not users_logged_out_check(simulated.assign(users_logged_out=6), {"users": 15, "users_logged_out": 0})["agrees"]
    assert not users_logged_out_check(simulated.assign(users_logged_out=6), {"users": 15, "users_logged_out": 15})["agrees"]
    assert users_logged_out_check(simulated.assign(users_logged_out=6), {"users": 15, "users_logged_out": 6})["agrees"]


def test_the_cross_tab_lock_is_oidc_client_ts_only(cli):
    code, out, err = cli("browser", SCENARIO, "--sdk", "auth0-spa-js", "--cross-tab-lock")
    assert code == 2 and "--cross-tab-lock: only for --sdk oidc-client-ts" in " ".join(err.split())


def test_validate_browser_refuses_a_variant_without_an_sdk(cli, tmp_path):
    scenario = tmp_path / "other.toml"
    scenario.write_text(SCENARIO.read_text().replace('name = "auth0-spa-js"', 'name = "keycloak"').replace(
        'preset = "auth0-spa-js-localstorage"', 'preset = "keycloak-js"'))
    code, out, err = cli("validate", scenario, "--browser", "--strategy", "keycloak", "--out", tmp_path / "v")
    assert code == 2 and "needs a variant named after an SDK" in " ".join(err.split())
    code, out, err = cli("validate", SCENARIO, "--browser", "--throttling", "sometimes")
    assert code == 2 and "--throttling: expected off or chrome" in err


def test_a_refusal_the_server_logged_before_the_success_is_still_matched_to_its_call():
    run = _race_run()
    success = next(e for e in run.server if e["event"] == "grant.success" and e["presented"] == "R1")
    run.server.remove(success)
    run.server.append(success)  # the server logged the racing call's refusal first
    merged = merge(run, "oidc-client-ts")
    calls = merged.calls[merged.calls["presented"] == "R1"]
    assert calls[["tab", "status", "server_event"]].values.tolist() == [[0, 200, "grant.success"], [1, 400, "grant.error"]]
    assert calls["server_detail"].iloc[1] == "refresh token already used"
    ev = merged.events
    assert ev.loc[ev["event"] == "refresh_end", "outcome"].tolist() == ["ok", "reuse_detected", "revoked"]


def test_validate_browser_compares_a_lab_run_folder_without_a_browser(cli, tmp_path):
    from loadtests.browser_lab import write_lab

    run = _race_run()
    scenario, _ = lab_scenario(load_scenario(SCENARIO), "oidc-client-ts", 1, 2, "60s", "x")
    result, merged, failure = lab_result(run, scenario, "oidc-client-ts")
    folder = tmp_path / "lab"
    folder.mkdir()
    write_lab(result, merged, run, folder)
    out = tmp_path / "v"
    code, stdout, err = cli("validate", SCENARIO, "--browser", "--strategy", "oidc-client-ts", "--lab-run", folder,
                            "--out", out)
    assert code in (0, 1), err
    rows = pd.read_csv(out / "validation-browser.csv").set_index("metric")
    # the lab's side, after its login: 3 refresh calls, one same-token race, both tabs logged out
    assert rows.loc[["refresh_calls", "same_token_races", "tabs_logged_out"], "measured"].tolist() == [3, 1, 2]
    assert (rows["replications"] >= 1).all() and (out / "simulated-oidc-client-ts" / "summary.csv").is_file()
    assert (code == 0) == bool(rows["agrees"].dropna().astype(bool).all())
