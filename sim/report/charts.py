"""The report's charts as functions: each receives a run (``sweep``: a list of runs; ``capacity``:
a :class:`sim.capacity.CapacityResult`) and returns
a :class:`matplotlib.figure.Figure`, which a notebook displays inline and ``fig.savefig`` writes.

Each has a ``*_table`` partner returning the numbers behind it as a DataFrame.
"""

from sim.report import auth_tier as _auth_tier
from sim.report import capacity as _capacity
from sim.report import headline as _headline
from sim.report import latency as _latency
from sim.report import refresh_load as _refresh_load
from sim.report import sweep as _sweep
from sim.report import tradeoff as _tradeoff

refresh_load = _refresh_load.figure
refresh_load_table = _refresh_load.table
headline = _headline.figure
headline_table = _headline.table
auth_tier = _auth_tier.figure
auth_tier_table = _auth_tier.table
latency_cdf = _latency.figure
latency_cdf_table = _latency.table
tradeoff = _tradeoff.figure
tradeoff_table = _tradeoff.table
sweep = _sweep.figure
sweep_table = _sweep.table
capacity = _capacity.figure
capacity_table = _capacity.table

__all__ = [
    "refresh_load", "refresh_load_table", "headline", "headline_table", "auth_tier", "auth_tier_table",
    "latency_cdf", "latency_cdf_table", "tradeoff", "tradeoff_table", "sweep", "sweep_table", "capacity", "capacity_table",
]
