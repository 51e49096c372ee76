"""The dependency arrows of DESIGN.md: loadtests -> sim, never the reverse; sim never loads locust."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def imported_modules(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_sim_imports_neither_loadtests_nor_locust_nor_gevent():
    bad = {(f, m) for f, m in imported_modules("sim") if m in ("loadtests", "locust", "gevent")}
    assert not bad, bad


def test_importing_all_of_sim_and_its_cli_leaves_locust_unloaded():
    code = ("import sys, sim, sim.engine, sim.report, sim.cli; sim.cli._register_plugins(); "
            "print(sorted(m for m in ('locust', 'gevent') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow  # an interpreter of its own: about a second
def test_a_simulation_job_imports_neither_pandas_nor_scipy():
    # a worker process only simulates and hands its counts back (the parent makes the tables):
    # pandas and scipy would be about 0.1 GB in every worker process of a big run
    code = ("import sys, sim; from sim.engine import jobs_of; from sim.engine.dispatch import execute; "
            "s = sim.load_scenario('scenarios/baseline.toml', {'population.users': 3, 'run.duration': '2m', "
            "'run.warmup': '0s', 'run.replications': 1}); counts, events = execute(jobs_of(s, s.names[:1])[0]); "
            "assert counts.bins and events is None; "
            "print(sorted(m for m in ('pandas', 'scipy', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
