"""The look every chart shares: fonts sized for slides, the Okabe–Ito palette, one colour and
marker per variant, time axes in readable units, and the label of a measured or partial run.

Charts are built on :class:`matplotlib.figure.Figure` directly (rendered by Agg), never through
``pyplot``: no global figure state, no GUI backend, and notebooks still display them inline.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.results import RunResult
from sim.units import format_number

#: Okabe & Ito (2008), ordered so that the first variants get the most distinct hues; yellow,
#: weak on white, comes last
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
#: a second cue beside colour, for print and for more variants than colours
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
MUTED = "#666666"
WARMUP_SHADE = "#DDDDDD"

RC = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.titlesize": 15,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "lines.linewidth": 2.0,
    "svg.fonttype": "none",
    "svg.hashsalt": "refreshlab",
}
DPI = 150


@contextmanager
def styled() -> Iterator[None]:
    """Apply the shared rcParams while a chart is built."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width_in: float = 11.0, height_in: float = 5.5) -> Figure:
    """An empty figure with constrained layout on an Agg canvas (call inside :func:`styled`)."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained", dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


class VariantStyle:
    """Colour, marker and line style per variant name, keyed on the variant's position: the
    scenario's order, then names first seen in later runs."""

    def __init__(self, names: Iterable[str]):
        self.order: list[str] = []
        for name in names:
            if name not in self.order:
                self.order.append(name)

    @classmethod
    def of(cls, results: RunResult | Iterable[RunResult]) -> "VariantStyle":
        """The styles for the variants of one run or of several runs."""
        runs = [results] if isinstance(results, RunResult) else list(results)
        return cls(name for r in runs for name in r.scenario.names)

    def _index(self, name: str) -> int:
        if name not in self.order:
            self.order.append(name)
        return self.order.index(name)

    def color(self, name: str) -> str:
        return PALETTE[self._index(name) % len(PALETTE)]

    def marker(self, name: str) -> str:
        return MARKERS[self._index(name) % len(MARKERS)]

    def linestyle(self, name: str) -> str:
        return LINESTYLES[(self._index(name) // len(PALETTE)) % len(LINESTYLES)]

    def line(self, name: str) -> dict:
        """Keyword arguments for ``ax.plot`` of this variant. Later variants draw thinner lines
        on top, so that a variant whose curve matches an earlier one still shows as a core
        inside the earlier, wider line; markers, spaced along each line at a different phase per
        variant, tell coinciding lines apart."""
        i = self._index(name)
        width = max(3.0 - 0.5 * (i % len(PALETTE)), 1.2)
        # markers at a phase of their own: where curves coincide, each variant's markers still show
        return {"color": self.color(name), "linestyle": self.linestyle(name), "linewidth": width, "label": name,
                "marker": self.marker(name), "markersize": 7, "markevery": (0.02 + 0.037 * (i % 8), 0.15),
                "markeredgecolor": "white", "markeredgewidth": 0.8}


def time_unit(span_s: float) -> tuple[float, str]:
    """Divisor and unit name that keep a time axis of ``span_s`` seconds readable."""
    if span_s <= 600:
        return 1.0, "s"
    if span_s <= 6 * 3600:
        return 60.0, "min"
    if span_s <= 3 * 86400:
        return 3600.0, "h"
    return 86400.0, "d"


def run_tag(results: RunResult | Iterable[RunResult]) -> str:
    """``"measured"``, ``"partial run"``, both, or ``""`` for complete simulated runs."""
    runs = [results] if isinstance(results, RunResult) else list(results)
    parts = []
    if any(r.kind == "measured" for r in runs):
        parts.append("measured" if all(r.kind == "measured" for r in runs) else "includes measured runs")
    if any(r.partial for r in runs):
        parts.append("partial run" if len(runs) == 1 else "includes partial runs")
    return ", ".join(parts)


def title(fig: Figure, text: str, results: RunResult | Iterable[RunResult]) -> None:
    """Set the figure's title, naming measured or partial runs."""
    tag = run_tag(results)
    fig.suptitle(f"{text} ({tag})" if tag else text, x=0.01, ha="left")


def no_data(ax, message: str = "no data") -> None:
    """Mark an axes whose numbers are missing instead of drawing nothing."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def legend(fig: Figure, axes) -> None:
    """One legend for the whole figure, under the axes: every labelled line once, in the order
    drawn (variant order)."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)


fmt = format_number
