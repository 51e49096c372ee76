"""The capacity chart: auth workers needed against users, one line per variant (from
:func:`sim.capacity.capacity`)."""

from __future__ import annotations

import pandas as pd
from matplotlib import transforms
from matplotlib.figure import Figure

from sim.report import style


def table(result) -> pd.DataFrame:
    """The numbers behind the chart: one row per variant and population."""
    return result.table.copy()


def figure(result) -> Figure:
    """Workers needed (y) against users (x, log scale when the populations span a factor of 20),
    one line per variant; a population no worker count up to the search's bound satisfied is
    marked with an upward triangle at that bound. Receives a CapacityResult, returns a Figure."""
    data = result.table
    variants = style.VariantStyle(result.scenario.names)
    with style.styled():
        fig = style.new_figure(11.0, 5.5)
        ax = fig.add_subplot()
        users = sorted(data["users"].unique())
        log_x = len(users) > 1 and users[-1] / users[0] >= 20
        shown = [n for n in variants.order if (data["variant"] == n).any()]
        # whole-number answers often coincide: each variant's line is shifted a few points up or
        # down so that none hides another (a sliver of one worker on any readable scale)
        step_pt = 2.5
        for i, name in enumerate(shown):
            line = data[data["variant"] == name].sort_values("users")
            shift = transforms.offset_copy(ax.transData, fig=fig, y=(i - (len(shown) - 1) / 2) * step_pt, units="points")
            met = line[line["workers_needed"].notna()]
            ax.plot(met["users"], met["workers_needed"].astype(float), transform=shift,
                    **{**variants.line(name), "markevery": None})
            unmet = line[line["workers_needed"].isna()]
            if not unmet.empty:
                ax.scatter(unmet["users"], [result.max_workers] * len(unmet), marker="^", s=90,
                           color=variants.color(name), zorder=3, transform=shift)
        # shifted artists do not count for autoscaling: the data limits are given here
        answers = data["workers_needed"].astype(float).fillna(result.max_workers)
        ax.update_datalim(list(zip(data["users"].astype(float), answers)))
        ax.margins(x=0.04, y=0.12)
        ax.autoscale_view()
        if data["workers_needed"].isna().any():
            ax.axhline(result.max_workers, color=style.MUTED, linestyle=":", linewidth=1)
            ax.annotate(f"▲ not met with {result.max_workers} workers", (0.01, 0.97), xycoords="axes fraction",
                        va="top", color=style.MUTED, fontsize=11)
        if log_x:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(users, [style.fmt(u) for u in users])
        ax.set_xlabel("users")
        ax.set_ylabel("auth workers needed")
        ax.set_ylim(bottom=0)
        ax.yaxis.get_major_locator().set_params(integer=True)
        reps = result.replications
        rule = f"upper 95% CI bound of {reps} replications" if reps > 1 else "one replication"
        ax.set_title(f"fewest workers meeting {result.slo} ({rule}); lines shifted apart slightly where they meet",
                     loc="left", fontsize=12, color=style.MUTED)
        style.legend(fig, [ax])
        fig.suptitle("Auth workers needed against users", x=0.01, ha="left")
    return fig
