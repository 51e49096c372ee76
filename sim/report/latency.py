"""Chart 4, added latency: the distribution over requests per variant, as a cumulative curve
read off the ``latency`` histogram (all replications pooled), with the summary's p50, p95 and
p99 (means over replications) marked on each curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from sim.metrics import LATENCY_BINS_MS
from sim.report import style
from sim.results import RunResult

#: the percentiles the summary gives, marked on the curves and listed in the table
QUANTILES = (50, 95, 99)
#: shares of requests the y axis can mark; the axis spans those the data needs
Y_TICKS = [0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999, 0.999999]


def histogram(result: RunResult, name: str) -> pd.DataFrame:
    """The added-latency histogram of one variant, replications pooled: ``lower_ms``,
    ``upper_ms`` (bin edges), ``requests`` and ``cum_share`` (share of requests at or below
    the upper edge), sorted, empty bins left out."""
    lat = result.latency
    lat = lat[lat["strategy"] == name] if "strategy" in lat else lat.iloc[0:0]
    counts = lat.groupby("added_latency_ms")["requests"].sum().sort_index()
    counts = counts[counts > 0]
    lower = counts.index.to_numpy(float)
    nxt = np.searchsorted(LATENCY_BINS_MS, lower, side="right")
    upper = np.where(nxt < len(LATENCY_BINS_MS), LATENCY_BINS_MS[np.minimum(nxt, len(LATENCY_BINS_MS) - 1)],
                     lower * LATENCY_BINS_MS[-1] / LATENCY_BINS_MS[-2])
    total = counts.sum()
    return pd.DataFrame({
        "lower_ms": lower, "upper_ms": upper, "requests": counts.to_numpy(),
        "cum_share": counts.cumsum().to_numpy() / total if total else np.zeros(len(counts)),
    })


def cdf_points(hist: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the piecewise-linear CDF: flat between filled bins, rising across each one;
    points at zero latency are left out (the axis is logarithmic)."""
    before = np.concatenate([[0.0], hist["cum_share"].to_numpy()[:-1]])
    x = np.column_stack([hist["lower_ms"], hist["upper_ms"]]).ravel()
    y = np.column_stack([before, hist["cum_share"]]).ravel()
    keep = x > 0
    return x[keep], y[keep]


def figure(result: RunResult) -> Figure:
    """Cumulative share of requests whose added latency is at most x (log x, logit y so that
    the tail shows), one curve per variant; receives a run, returns a Figure."""
    variants = style.VariantStyle.of(result)
    curves = {n: histogram(result, n) for n in result.scenario.names}
    curves = {n: h for n, h in curves.items() if len(h)}
    agg = result.aggregate
    with style.styled():
        fig = style.new_figure()
        ax = fig.add_subplot()
        if not curves:
            style.no_data(ax, "no latency histogram in this run")
        else:
            first = min(float(np.interp(LATENCY_BINS_MS[1], *cdf_points(h))) for h in curves.values())
            total = max(h["requests"].sum() for h in curves.values())
            lo = max([t for t in Y_TICKS if t <= first] or [Y_TICKS[0]])
            hi = min([t for t in Y_TICKS if t >= 1 - 1 / total] or [Y_TICKS[-1]])
            x_right = max(h["upper_ms"].max() for h in curves.values()) * 1.5
            for name, h in curves.items():
                x, y = cdf_points(h)
                # the only markers on this chart are the summary's percentiles
                style_kw = {**variants.line(name), "marker": "", "markevery": None}
                if (h["lower_ms"] == 0).all():
                    style_kw["label"] = f"{name} (no request delayed)"
                ax.plot(np.append(x, x_right), np.clip(np.append(y, 1.0), lo, hi), clip_on=False, **style_kw)
                marks = [(float(agg.at[name, f"added_latency_ms_p{q}"]), q / 100) for q in QUANTILES
                         if name in agg.index and f"added_latency_ms_p{q}" in agg]
                marks = [(v, q) for v, q in marks if v == v and v > 0 and lo <= q <= hi]
                if marks:
                    ax.plot(*zip(*marks), linestyle="none", marker=variants.marker(name), markersize=9,
                            color=style_kw["color"], markeredgecolor="black", markeredgewidth=1.0, zorder=5)
            ax.set_xscale("log")
            ax.set_xlim(LATENCY_BINS_MS[1], x_right)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: style.fmt(v)))
            ax.set_yscale("logit")
            ax.set_ylim(lo, hi)
            ax.yaxis.set_major_locator(FixedLocator([t for t in Y_TICKS if lo <= t <= hi]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.10g}%"))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("added latency per request (ms, log scale; < 0.1 ms counts as none)")
            ax.set_ylabel("requests with at most this added latency")
            style.legend(fig, [ax])
        style.title(fig, "Added latency: how many requests wait, and how long", result)
    return fig


def table(result: RunResult) -> pd.DataFrame:
    """Per variant: requests and the p50, p95 and p99 of added latency as the summary gives
    them (means over replications, 95% CI half-widths), and the share of requests that waited
    not at all (from the histogram, replications pooled)."""
    agg = result.aggregate
    rows = {}
    for name in result.scenario.names:
        h = histogram(result, name)
        none = h.loc[h["lower_ms"] == 0, "requests"].sum() / h["requests"].sum() if len(h) else np.nan
        row = agg.loc[name] if name in agg.index else pd.Series(dtype=float)
        rows[name] = {"requests": row.get("requests", np.nan), "requests ci95": row.get("requests_ci95", np.nan),
                      "no added latency (%)": 100 * none}
        for q in QUANTILES:
            rows[name][f"p{q} (ms)"] = row.get(f"added_latency_ms_p{q}", np.nan)
            rows[name][f"p{q} (ms) ci95"] = row.get(f"added_latency_ms_p{q}_ci95", np.nan)
    return pd.DataFrame.from_dict(rows, orient="index").astype(float).rename_axis("variant")
