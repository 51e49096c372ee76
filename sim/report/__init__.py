"""Charts (matplotlib) and the self-contained HTML and Markdown report of one or more runs.

``build_report(results, out_dir)`` writes ``report.html``, ``report.md`` and ``charts/*.png|svg``;
``from sim.report import charts`` gives each chart as a function returning a Figure.
"""

from sim.report import charts
from sim.report.build import build_report
from sim.report.summary import summary

__all__ = ["build_report", "charts", "summary"]
