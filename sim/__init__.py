"""refreshlab's simulator: scenarios, sans-IO strategy rules, the SimPy engine and its metrics.

Public API::

    import sim
    scenario = sim.load_scenario("scenarios/baseline.toml")
    result = sim.run(scenario)            # a RunResult: .summary, .timeseries, .latency, .events
    result.save("runs/baseline")
    again = sim.load_run("runs/baseline")
"""

from sim.engine import run
from sim.results import RunResult, load_run
from sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = ["run", "load_run", "load_scenario", "parse_scenario", "Scenario", "ScenarioError", "RunResult"]
