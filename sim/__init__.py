"""refreshlab's simulator: scenarios, sans-IO strategy rules, the SimPy engine and its metrics.

Public API::

    import sim
    scenario = sim.load_scenario("scenarios/baseline.toml")
    result = sim.run(scenario)            # a RunResult: .summary, .timeseries, .latency, .events
    result.save("runs/baseline")
    again = sim.load_run("runs/baseline")
"""

from sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

_LAZY = {"run": "sim.engine", "load_run": "sim.results", "RunResult": "sim.results"}


def __getattr__(name):
    # the engine pulls in pandas and SimPy: not needed to validate a scenario
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")

__all__ = ["run", "load_run", "load_scenario", "parse_scenario", "Scenario", "ScenarioError", "RunResult"]
