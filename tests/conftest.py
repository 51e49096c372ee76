import os
import pathlib
import sys

import pytest
from hypothesis import settings

# CI runs the same examples every time (a red CI must be reproducible); locally they vary
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

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
def cli():
    """Run the console script in a subprocess: returns (exit code, stdout, stderr)."""
    import subprocess

    def run(*args, cwd=ROOT, timeout=300):
        proc = subprocess.run([sys.executable, "-m", "sim.cli", *map(str, args)], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr

    return run


#: markers of checks too slow for the default run; ``.ci/run`` runs them in a second pass
#: (``pytest -m "peers or fidelity or failing_runs"``), and naming them in ``-m`` runs them anywhere
OPT_IN_MARKERS = ("peers", "fidelity", "failing_runs")


def pytest_collection_modifyitems(config, items):
    chosen = config.getoption("markexpr") or ""
    for item in items:
        own = [m for m in OPT_IN_MARKERS if m in item.keywords]
        if own and not any(m in chosen for m in own):
            item.add_marker(pytest.mark.skip(reason=f"opt-in: run with -m {own[-1]}"))
