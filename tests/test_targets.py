"""Target profiles, token reading, refusal classification, the preflight and the "fail loudly"
rules of ``refreshlab loadtest`` (closed port, wrong credentials, a run that measured nothing,
a target that dies mid-run)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

from loadtests.targets.classify import Classifier
from loadtests.targets.profile import bundled_names, load_profile, parse_profile
from loadtests.targets.tokens import expires_unix, token_hash, token_id
from loadtests.targets.transport import _first_form
from sim.scenario import ScenarioError
from tests.conftest import poll_until

REFRESHLAB = Path(sys.executable).with_name("refreshlab")
SMALL = Path(__file__).parent / "data" / "loadtest-small.toml"


def refreshlab(*args, timeout=120):
    started = time.monotonic()
    done = subprocess.run([str(REFRESHLAB), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


# -- profiles ---------------------------------------------------------------------------------

def test_every_bundled_profile_validates_and_names_its_source():
    names = bundled_names()
    for wanted in ("reference", "seed", "keycloak", "auth0", "okta", "hydra", "spring", "simplejwt",
                   "simplejwt-blacklist", "oidc-provider"):
        assert wanted in names
    for name in names:
        profile = load_profile(name)
        assert profile.source, name
        assert profile.name == name


def test_profile_errors_name_the_file_and_the_field(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text('[login]\ngrant = "implicit"\n[tokens]\naccess_ttl = 30\n')
    with pytest.raises(ScenarioError) as caught:
        load_profile(bad)
    text = caught.value.render()
    assert str(bad) in text and "login.grant" in text and "tokens.access_ttl" in text
    with pytest.raises(ScenarioError, match=r"extends: unknown profile 'nope'"):
        parse_profile({"extends": "nope"}, "x.toml")
    with pytest.raises(ScenarioError, match=r"client: .*needs id and secret"):
        parse_profile({"client": {"auth": "client_secret_basic"}}, "x.toml")
    with pytest.raises(ScenarioError, match="insecure = true"):
        parse_profile({"tls": {"verify": False}}, "x.toml")


def test_a_profile_file_extends_a_bundled_one(tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("username,password\nalice,a1\nbob,b2\n")
    mine = tmp_path / "mine.toml"
    mine.write_text('extends = "simplejwt"\nname = "mine"\nbase_url = "http://127.0.0.1:9"\n'
                    '[credentials]\ncsv = "users.csv"\n')
    profile = load_profile(mine)
    assert profile.refresh.path == "/api/token/refresh/" and profile.base_url == "http://127.0.0.1:9"
    assert profile.credentials.user(0) == ("alice", "a1") and profile.credentials.user(3) == ("bob", "b2")


def test_bad_target_table_in_a_scenario_exits_2_naming_file_and_field(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL.read_text() + '\n[target]\nextends = "simplejwt"\n[target.refresh]\nstyle = "xml"\n')
    done, _ = refreshlab("loadtest", scenario, "--strategy", "dual_token", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert str(scenario) in done.stderr and "target.refresh.style" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


# -- tokens and classification ----------------------------------------------------------------

def test_opaque_tokens_get_a_hash_identity_and_expires_in():
    assert token_id("abc.def") == token_hash("abc.def") != token_hash("abc.deg")
    assert expires_unix("opaque-string", 1000.0, 30, fmt="opaque") == 1030.0
    assert expires_unix("opaque-string", 1000.0, None, fmt="opaque", default_ttl_s=60, time_scale=2) == 1030.0
    signed = jwt.encode({"exp": 2000, "jti": "j1"}, "k" * 32, algorithm="HS256")
    assert token_id(signed) == "j1"
    assert expires_unix(signed, 1700.0, 300.4) == 2000.4  # expires_in refines whole-second exp
    assert expires_unix(signed, 1700.0, 250) == 2000.0    # disagreeing expires_in is ignored


def test_classification_uses_the_servers_words_then_the_clients_knowledge():
    c = Classifier(load_profile("simplejwt-blacklist").classify)
    assert c.access("Given token not valid ... Token is expired", 100.0, 50.0) == ("expired", "server")
    assert c.access('Bearer realm="api" Token is invalid', 100.0, 150.0) == ("expired", "client")
    assert c.access('Bearer realm="api" Token is invalid', 100.0, 50.0) == ("invalid", "server")
    # inside the token's last second by the client's clock: the server's whole-second exp has passed
    assert c.access('Bearer realm="api" Token is invalid', 100.0, 99.2) == ("expired", "client")
    assert c.refresh("Token is blacklisted token_not_valid", False, 1e9, 0.0) == ("reuse_detected", "server")
    o = Classifier(load_profile("oidc-provider").classify)
    # a bare invalid_grant: reuse when the client saw the token rotated, expired past its lifetime
    assert o.refresh("invalid_grant grant request is invalid", True, 1e9, 0.0) == ("reuse_detected", "client")
    assert o.refresh("invalid_grant grant request is invalid", False, 10.0, 20.0) == ("expired", "client")
    assert o.refresh("invalid_grant grant request is invalid", False, 1e9, 0.0) == ("revoked", "server")
    r = Classifier(load_profile("reference").classify)
    assert r.refresh("invalid_grant revoked", True, 1e9, 0.0) == ("revoked", "server")
    assert r.access('Bearer error="invalid_token", error_description="expired"', 1e9, 0.0) == ("expired", "server")


def test_the_form_reader_keeps_hidden_fields_and_the_submit_button():
    html = ('<form action="/interaction/x/login" method="post"><input type="hidden" name="prompt" value="login"/>'
            '<input name="login"><input type="password" name="password"><input type="checkbox" name="remember">'
            '<button type="submit" name="go" value="1">Sign in</button></form><form action="/other"></form>')
    action, fields = _first_form(html)
    assert action == "/interaction/x/login"
    assert fields == {"prompt": "login", "login": "", "password": "", "go": "1"}


# -- fail loudly ------------------------------------------------------------------------------

def in_process(cli, *args):
    """``cli(*args)`` (the console script in this process: no interpreter start-up in the time)
    and the seconds it took."""
    started = time.monotonic()
    code, stdout, stderr = cli(*args)
    return code, stdout, stderr.replace("\n", " "), time.monotonic() - started


def test_closed_port_fails_in_the_preflight_within_10_s(cli, tmp_path):
    from loadtests.server.process import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code, _, err, took = in_process(cli, "loadtest", SMALL, "--strategy", "dual_token", "--target", url,
                                    "--out", tmp_path / "out")
    assert code == 1 and took < 10, err
    assert "preflight step 'login" in err and url in err and "no answer" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.loadtest
def test_wrong_credentials_fail_in_the_preflight_naming_step_and_status(cli, tmp_path):
    from loadtests.server.process import serve_in_subprocess

    profile = tmp_path / "wrong.toml"
    profile.write_text('extends = "reference"\nname = "wrong"\n[credentials]\npassword = "not-the-password"\n')
    with serve_in_subprocess(SMALL, "dual_token", 60.0) as url:
        code, _, err, took = in_process(cli, "loadtest", SMALL, "--strategy", "dual_token", "--time-scale", 60,
                                        "--target", url, "--target-profile", profile, "--out", tmp_path / "out")
    assert code == 1 and took < 10, err
    assert "preflight step 'login" in err and "answered 401" in err and url in err
    assert not (tmp_path / "out").exists()


@pytest.mark.loadtest
def test_a_server_on_a_test_clock_is_refused_as_a_target(cli, tmp_path):
    from loadtests.server.process import serve_in_subprocess

    with serve_in_subprocess(SMALL, "dual_token", 60.0, test_clock=True) as url:
        code, _, err, _ = in_process(cli, "loadtest", SMALL, "--strategy", "dual_token", "--time-scale", 60,
                                     "--target", url, "--out", tmp_path / "out")
    assert code == 2 and "runs on a test clock" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.loadtest
@pytest.mark.failing_runs
def test_a_run_that_measured_nothing_is_marked_failed(tmp_path):
    scenario = tmp_path / "late.toml"
    # everybody arrives after the measurement window: nothing is measured
    scenario.write_text(SMALL.read_text().replace('duration = "10m"', 'duration = "2m"')
                        .replace('arrival = { pattern = "ramp", over = "1m" }',
                                 'arrival = { pattern = "ramp", start = "30m", over = "1m" }'))
    done, _ = refreshlab("loadtest", scenario, "--strategy", "dual_token", "--time-scale", 60, "--out", tmp_path / "out")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "measured nothing" in done.stderr and "requests" not in done.stdout
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "failed" and run["partial"] is True and "measured nothing" in run["failure"]
    assert (tmp_path / "out" / "locust.log").is_file()


@pytest.mark.loadtest
@pytest.mark.failing_runs
def test_a_target_that_dies_mid_run_gives_a_partial_folder_and_exit_1(tmp_path):
    from loadtests.server.process import free_port, run_uvicorn_process, serve_args

    port = free_port()
    args = serve_args(SMALL, "dual_token", 60.0, port=port)
    with run_uvicorn_process(args, port) as (url, server):
        run = subprocess.Popen([str(REFRESHLAB), "loadtest", SMALL, "--strategy", "dual_token", "--time-scale", "60",
                                "--target", url, "--out", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the server's ledger shows the run under way: then it dies
        def under_way() -> bool:
            with urllib.request.urlopen(url + "/ledger", timeout=5) as answer:
                return json.load(answer)["totals"]["refresh_calls"] >= 5

        poll_until(under_way, what="the load test's refreshes on the server")
        server.kill()
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stdout + stderr
    assert "stopped answering" in stderr
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    assert meta["partial"] is True and meta["status"] in ("partial", "failed")


@pytest.mark.loadtest
@pytest.mark.slow
def test_resent_pairs_inferred_on_the_client_equal_the_servers_own(tmp_path):
    from loadtests.server.process import serve_in_subprocess

    scenario = Path(__file__).parent / "data" / "loadtest-resent.toml"
    # the reference server's protocol, without its ledger: the client derives mints and re-sent
    # pairs from the token strings it receives, as against any third-party server
    profile = tmp_path / "blind.toml"
    profile.write_text('extends = "reference"\nname = "reference-without-ledger"\nledger = false\n')
    with serve_in_subprocess(scenario, "same_pair", 60.0) as url:
        done, _ = refreshlab("loadtest", scenario, "--strategy", "same_pair", "--time-scale", 60, "--target", url,
                             "--target-profile", profile, "--out", tmp_path / "out")
        with urllib.request.urlopen(url + "/ledger", timeout=5) as answer:
            truth = json.load(answer)["totals"]
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    counters = run["client_counters"]
    # the preflight's login and its one genuine refresh are in the server's records too (its
    # forged refresh token is refused before the ledger sees it)
    assert run["preflight_calls"]["login"] == 1 and run["preflight_calls"]["refresh"] == 2
    assert counters["refresh_calls"] == truth["refresh_calls"] - 1
    # the server's truth: refresh answers that handed out the pair a rotation had already issued
    assert counters["resent_pairs"] == truth["resent_pairs"] > 0
    # neither minted: the client's new-token counts equal the server's mints
    assert counters["refresh_mints"] == truth["refresh_mints"] - 2
    assert counters["access_mints"] == truth["access_mints"] - 2
