import os
import pathlib
import signal
import threading

import pytest
from hypothesis import settings

# no per-example time limit: on a busy shared host a correct example can take seconds.
# CI runs the same examples every time (a red CI must be reproducible); locally they vary
settings.register_profile("shared", deadline=None)
settings.register_profile("ci", parent=settings.get_profile("shared"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "shared")

# a shell without job control starts a background command (`pytest &`) with Ctrl-C ignored, and
# every process a test starts would inherit that: the checks of what Ctrl-C does need the default
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"


def scenario_dict(**sections) -> dict:
    """A scenario in file form: one user, constant inputs, zero latency, unless overridden."""
    base = {
        "run": {"seed": 1, "duration": "30m", "warmup": "0s", "replications": 1},
        "population": {"users": 1, "arrival": {"pattern": "all_at_once"}},
        "workload": {"think_time": "60s", "burst_size": 1},
        "network": {"rtt": "0s"},
        "auth": {"login_time": "0s", "refresh_time": "0s", "sign_time": "0s", "verify_time": "0s"},
        "api": {"verify_time": "0s"},
        "tokens": {"access_ttl": "5m"},
        "strategies": [{"name": "reactive", "client": {"trigger": "reactive"}, "server": {"kind": "dual_token"}}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


@pytest.fixture
def make_scenario():
    from sim.scenario import parse_scenario

    return lambda **sections: parse_scenario(scenario_dict(**sections))


@pytest.fixture
def cli(monkeypatch):
    """Run the console script in this process (click's runner): returns (exit code, stdout,
    stderr). An exception other than the command's exit is raised, not hidden in the result."""
    from click.testing import CliRunner

    from sim.cli import build_command

    command = build_command()

    def run(*args, cwd=ROOT, env=None):
        monkeypatch.chdir(cwd)
        outcome = CliRunner().invoke(command, [str(a) for a in args], prog_name="refreshlab", env=env)
        if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
            raise outcome.exception
        return outcome.exit_code, outcome.stdout, outcome.stderr

    return run


def strict_json(text: str):
    """``json.loads`` that refuses NaN and infinities, as strict parsers do."""
    import json

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server of its own on a free loopback port (``.ci/run`` installs Debian's
    ``redis-server``): started once per test session, ready when it says so and answers PING."""
    import shutil
    import subprocess

    import redis

    from loadtests.server.process import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--loglevel", "notice"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    seen = []
    for line in process.stdout:  # wait for the server to say it is ready (or to exit)
        seen.append(line)
        if "Ready to accept connections" in line:
            break
    import threading

    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep draining
    url = f"redis://127.0.0.1:{port}/0"
    try:
        if process.poll() is not None or not redis.Redis.from_url(url).ping():
            pytest.fail("redis-server did not start:\n" + "".join(seen))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


#: markers of checks too slow for the default run, run only when named in ``-m`` (``.ci/run`` names
#: ``peers``, ``failing_runs`` and ``browser``; the minutes-long ``fidelity`` runs are a manual step)
OPT_IN_MARKERS = ("peers", "fidelity", "failing_runs", "browser")
#: checks that failed intermittently: run only when ``unstable`` itself is named (a manual step)
UNSTABLE = "unstable"


def pytest_collection_modifyitems(config, items):
    chosen = config.getoption("markexpr") or ""
    for item in items:
        own = [m for m in (*OPT_IN_MARKERS, UNSTABLE) if item.get_closest_marker(m) is not None]
        if own and not any(m in chosen for m in own):
            item.add_marker(pytest.mark.skip(reason=f"opt-in: run with -m {own[-1]}"))
        elif UNSTABLE in own and UNSTABLE not in chosen:
            item.add_marker(pytest.mark.skip(reason=f"intermittent: run with -m {UNSTABLE}"))
    _schedule(items)


def _schedule(items) -> None:
    """How ``-n 2 --dist loadgroup`` spreads the tests over the workers: one test at a time,
    except that tests sharing a module- or class-scoped fixture (a running server, a set of runs)
    form one unit on one worker, so the fixture is built once. xdist hands out the biggest units
    first; among single tests, those that start servers or Locust go first, so that the short
    in-process tests fill the end and both workers finish together."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = [name for name, defs in (info.name2fixturedefs.items() if info else ())
                  if defs and defs[-1].scope in ("module", "class", "package")]
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("loadtest") is None)


def poll_until(condition, timeout_s: float = 60.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy (the state is reached) and return
    that; fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s}s")


def advance_clock(client, seconds: float) -> float:
    """Move the test clock of the server behind ``client`` (an ``httpx.Client`` with its base URL,
    started with ``test_clock=True``) forward by ``seconds`` scenario seconds; returns the new
    scenario time."""
    from loadtests.server import protocol as p

    answer = client.post(p.CLOCK_PATH, json={p.ADVANCE_FIELD: seconds})
    assert answer.status_code == 200, answer.text
    return answer.json()["scenario_time_s"]
