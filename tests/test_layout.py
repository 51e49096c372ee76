"""The dependency arrows of DESIGN.md: loadtests -> sim, never the reverse; sim never loads locust."""

import ast
import subprocess
import sys

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
