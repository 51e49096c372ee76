"""The incidents measured: a load test against the reference server (real Locust, loopback)
shows the symptom of the broken variant and its absence with the fix, for the cookie-jar race,
the loser that deletes the cookies, the synchronised timers and the server-rendered fan-out
(scenarios/incidents)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SCENARIOS

pytestmark = [pytest.mark.loadtest, pytest.mark.slow, pytest.mark.timeout(240)]

REFRESHLAB = Path(sys.executable).with_name("refreshlab")
# 12 users for 9 scenario minutes at 60x: two refresh rounds (240 s and 480 s) in 9 wall seconds
ARGS = ("--time-scale", "60", "--users", "12", "--duration", "9m")


def measure(tmp_path: Path, incident: str, *strategies: str, edits: tuple[tuple[str, str], ...] = (),
            args: tuple = ARGS) -> list[pd.Series]:
    """Load-test the variants side by side (one reference server and one Locust each); returns
    their summary rows. ``edits``: (old, new) texts replaced in the scenario file first."""
    path = SCENARIOS / "incidents" / f"{incident}.toml"
    if edits:
        text = path.read_text()
        for old, new in edits:
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / path.name
        path.write_text(text)
    return measure_file(tmp_path, path, *strategies, args=args)


def measure_file(tmp_path: Path, path: Path, *strategies: str, args: tuple = ARGS) -> list[pd.Series]:
    """:func:`measure` of the scenario file ``path``."""
    runs = []
    for strategy in strategies:
        out = tmp_path / strategy
        command = [str(REFRESHLAB), "loadtest", str(path),
                   "--strategy", strategy, *args, "--out", str(out), "--json"]
        runs.append((out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    rows = []
    for out, process in runs:
        stdout, stderr = process.communicate(timeout=200)
        assert process.returncode == 0, stdout[-2000:] + stderr[-3000:]
        summary = pd.read_csv(out / "summary.csv", dtype={"replication": str})
        rows.append(summary[summary["replication"] == "0"].iloc[0])
    return rows


#: The race needs two calls to pass the check before either writes. The reference server's
#: check-to-write window is the scenario's service time divided by the time scale (6.2 ms is
#: 0.1 ms at 60x, about 1 ms with the event loop's timer), while injected round trips are slept
#: unscaled, so sibling calls spread about 2.5 ms apart: at 60x on a quiet host they rarely meet
#: in the window, and a run can show no race at all. With 30 s tokens at 3x the window is 2 ms of
#: wall time against calls spread about 1 ms apart (round trips of 80 +- 10 ms); 16 users for
#: 65 s give two renewal rounds, the first race's logout inside the run, and a simulated mean of
#: about 5 benign revocations, none in 0 of 100 replications.
COOKIE_JAR_EDITS = (('access_ttl = "5m"', 'access_ttl = "30s"'), ('threshold = "60s"', 'threshold = "6s"'),
                    ('check_interval = "5s"', 'check_interval = "1s"'), ('over = "4m"', 'over = "10s"'),
                    ('sd = "25ms"', 'sd = "10ms"'))


def test_measured_cookie_jar_race(tmp_path):
    broken, fixed = measure(tmp_path, "cookie_jar_race", "broken_no_cas", "fix_cas_successor",
                            edits=COOKIE_JAR_EDITS, args=("--time-scale", "3", "--users", "16", "--duration", "65s"))
    # concurrent refreshes both succeed; the jar and the session row keep different tokens
    assert broken["stranded_tokens"] > 0 and broken["benign_revocations"] > 0
    assert broken["forced_logins"] > 0 and broken["race_to_logout_s_mean"] > 0
    assert fixed["refresh_calls"] > 0  # a race, when one happens, is answered with the successor (a re-sent pair)
    assert fixed["forced_logins"] == fixed["stranded_tokens"] == fixed["benign_revocations"] == 0


def test_measured_loser_deletes_cookies(tmp_path):
    # the recovery's 500 ms is a wall-clock wait in the browser (the sibling's answer is on its
    # way over a real network): at 60x, 30 s of scenario time is those 500 ms of wall time
    broken, fixed = measure(tmp_path, "loser_deletes_cookies", "broken_loser_deletes", "fix_adopt_sibling",
                            edits=(('recovery_delay = "500ms"', 'recovery_delay = "30s"'),))
    assert broken["spurious_logouts"] > 0 and broken["stranded_tokens"] > 0
    assert broken["benign_revocations"] == 0  # nothing was revoked: every one of these logouts is spurious
    assert fixed["reuse_detections"] > 0  # the races still happen; the client recovers from them
    assert fixed["forced_logins"] == fixed["spurious_logouts"] == fixed["stranded_tokens"] == 0


def test_measured_synchronised_timers(tmp_path):
    broken, fixed = measure(tmp_path, "synchronised_timers", "broken_synchronised", "fix_jitter_gotrue_reuse_interval")
    assert broken["benign_revocations"] > 0 and broken["forced_logins"] > 0
    assert fixed["refresh_calls"] > 0
    assert fixed["forced_logins"] == fixed["benign_revocations"] == fixed["spurious_logouts"] == 0


def test_measured_ssr_fanout(tmp_path):
    # a page view here is a burst of 3 to 5 server requests: 12 users at 60x are about 240 calls
    # a wall second per variant, three variants side by side more than two cores serve (calls
    # then wait seconds and time out). 6 users keep each variant near the other incidents' rate.
    broken, single_flight, replay = measure(tmp_path, "ssr_fanout", "broken_single_use", "fix_middleware_single_flight",
                                            "fix_successor_replay", args=("--time-scale", "60", "--users", "6",
                                                                          "--duration", "9m"))
    # the server requests of a page present the page's refresh cookie each: all but one refused,
    # the user sent to the login page with the session still valid
    assert broken["spurious_logouts"] > 0 and broken["reuse_detections"] > 0 and broken["benign_revocations"] == 0
    assert single_flight["refresh_calls"] > 0 and replay["resent_pairs"] > 0
    for fixed in (single_flight, replay):
        assert fixed["forced_logins"] == fixed["spurious_logouts"] == fixed["reuse_detections"] == 0


SLIDING_LAPSE = """
description = "sliding tokens that lapse between page views, and a tab that starts with an empty store"
[run]
seed = 3
duration = "6m"
[population]
users = 6
tabs = 2
[workload]
think_time = "90s"
[network]
rtt = "80ms"
[auth]
queue_timeout = "1m"
[tokens]
access_ttl = "1m"
[[strategies]]
name = "lapse"
client = { trigger = "sliding", storage = "shared" }
server = { kind = "sliding", access_ttl = "1m", window = "30s" }
[[strategies]]
name = "empty_store"
client = { trigger = "sliding", storage = "per_tab" }
server = { kind = "sliding", access_ttl = "10m", window = "5m" }
"""


def test_measured_sliding_lapse_is_not_spurious_and_an_empty_store_login_is(tmp_path):
    path = tmp_path / "sliding_lapse.toml"
    path.write_text(SLIDING_LAPSE)
    lapse, empty = measure_file(tmp_path, path, "lapse", "empty_store", args=("--time-scale", "60"))
    # every page view 90 s after the last finds the 1-minute token expired: the reference server's
    # 401 says "expired", a lapse the server decided
    assert lapse["forced_logins"] > 0 and lapse["spurious_logouts"] == 0
    assert lapse["lapse_logins_per_user_day"] > 0
    # the second tab has no token of its own (per-tab storage): it logs in although the session lives
    assert empty["forced_logins"] == empty["spurious_logouts"] == 6
    assert empty["lapse_logins_per_user_day"] == 0


SERVER_MECHANISMS = """
description = "two tabs whose timers renew one shared token at the same instant, against three server mechanisms"
[run]
seed = 5
duration = "9m"
[population]
users = 12
tabs = 2
[workload]
think_time = { dist = "exponential", mean = "30s" }
[network]
rtt = "80ms"
# a call's loopback and server time is bounded by the timeout scaled (167 ms of wall clock at 60x
# for 10 s), which a busy host's scheduling alone exceeds; as generous as the queue timeout
timeout = "1m"
[auth]
queue_timeout = "1m"
[tokens]
access_ttl = "5m"
refresh_ttl = "1d"
[[strategies]]
name = "grace_unauthenticated"
client = { trigger = "timer", timer_phase = "exp", check_interval = "5s", threshold = "60s", storage = "shared" }
server = { kind = "dual_token", rotation = true, reuse_detection = "family", grace_period = "10s", grace_returns = "unauthenticated" }
[[strategies]]
name = "deferred_split_jar"
client = { trigger = "timer", timer_phase = "exp", check_interval = "5s", threshold = "60s", storage = "shared" }
server = { preset = "supertokens", access_ttl = "5m", refresh_ttl = "1d" }
[[strategies]]
name = "deferred_last_write_wins"
client = { trigger = "timer", timer_phase = "exp", check_interval = "5s", threshold = "60s", storage = "shared", jar_writes = "last_write_wins" }
server = { preset = "supertokens", access_ttl = "5m", refresh_ttl = "1d" }
"""


def test_measured_unauthenticated_grace_and_deferred_commit(tmp_path):
    path = tmp_path / "server_mechanisms.toml"
    path.write_text(SERVER_MECHANISMS)
    unauth, split, lww = measure_file(tmp_path, path, "grace_unauthenticated", "deferred_split_jar",
                                      "deferred_last_write_wins", args=("--time-scale", "60"))
    # the replay is accepted inside the grace window but answered unauthenticated: a login page
    # though nothing was revoked
    assert unauth["grace_reuses"] > 0 and unauth["spurious_logouts"] > 0
    assert unauth["reuse_detections"] == unauth["benign_revocations"] == 0
    # deferred commit: every concurrent refresh succeeds; a jar that keeps the first answer while
    # the store keeps the last commits one child and presents the other: theft detection
    assert split["benign_revocations"] > 0 and split["spurious_logouts"] == 0
    # a jar that keeps the last answer as the store does presents the child it uses, except when
    # a page view uses the first answer's access token before the second answer lands (that
    # commits the first child; the jar then presents the second). The scenario's round trips
    # leave no such gap, but a busy host delays one answer by tens of ms of wall clock, seconds
    # of scenario time at 60x (measured once: answers 125 and 217 ms after the pair left, a page
    # view between them). Simulated with 1 s (or 3 s) of spread in the round trips: 0.15
    # detections a run (at most 1 in 20 replications, each at most two tabs' logins), against
    # 12 of 12 races with the split jar.
    # At most 2 (a Poisson mean of 0.15 goes past 2 once in 2,000 runs):
    assert lww["reuse_detections"] <= 2 and lww["forced_logins"] <= 2 * lww["reuse_detections"]
    assert lww["refresh_calls"] > 0 and split["reuse_detections"] > lww["reuse_detections"]
