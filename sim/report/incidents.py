"""The incident library's page: for every scenario of ``scenarios/incidents``, its paragraph (the
scenario's description), one chart of the divergence metrics per variant, and the numbers.

Regenerate with ``python -m sim.report.incidents`` (writes ``docs/incidents.md`` and its charts
in ``docs/incidents/``); every number on the page comes from that run.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sim.results import RunResult
from sim.units import format_number

#: (summary column, label) drawn for each variant
BARS = [
    ("spurious_logouts", "spurious logouts"),
    ("benign_revocations", "revoked by a benign race"),
    ("forced_logins", "forced logins, all"),
    ("stranded_tokens", "stranded refresh tokens"),
]
TABLE = BARS + [("race_to_logout_s_mean", "race → logout, s"), ("reuse_detections", "reuse detections"),
                ("expiry_failures", "expiry failures (401)"), ("requests", "requests")]


def divergence_chart(result: RunResult, title: str) -> Figure:
    """Grouped bars: per variant, the mean of each of :data:`BARS` over replications with its
    95% CI as an error bar."""
    from sim.report.style import PALETTE, new_figure, styled

    agg = result.aggregate
    with styled():
        fig = new_figure(11.0, 4.8)
        ax = fig.add_subplot()
        x = np.arange(len(agg))
        width = 0.8 / len(BARS)
        for i, (col, label) in enumerate(BARS):
            means = agg[col].astype(float).fillna(0.0).to_numpy()
            ci = agg[f"{col}_ci95"].astype(float).fillna(0.0).to_numpy()
            ax.bar(x + (i - (len(BARS) - 1) / 2) * width, means, width, yerr=ci, capsize=3,
                   color=PALETTE[i], label=label)
        ax.set_xticks(x, [textwrap.fill(n.replace("_", " "), 22) for n in agg.index])
        users, minutes = result.scenario.population.users, result.scenario.run.duration_s / 60
        ax.set_ylabel(f"per run ({users} users, {minutes:g} min)")
        ax.set_title(title)
        ax.legend(loc="upper right", frameon=False)
    return fig


def _cell(row, col) -> str:
    mean, ci = float(row[col]), float(row.get(f"{col}_ci95", np.nan))
    if mean != mean:
        return "–"
    return format_number(mean) + (f" ± {format_number(ci)}" if ci == ci and ci > 0 else "")


def incident_section(path: Path, result: RunResult, chart: str) -> str:
    """The page's section of one incident: title, paragraph, chart, table of the variants."""
    scenario = result.scenario
    lines = [f"## {path.stem.replace('_', ' ').capitalize()}", "", " ".join(scenario.description.split()), "",
             f"![{path.stem}]({chart})", "",
             "| variant | " + " | ".join(label for _, label in TABLE) + " |",
             "|---|" + "---:|" * len(TABLE)]
    for name, row in result.aggregate.iterrows():
        lines.append(f"| `{name}` | " + " | ".join(_cell(row, col) for col, _ in TABLE) + " |")
    reps = scenario.run.replications
    lines += ["", f"`refreshlab compare scenarios/incidents/{path.name}` — {scenario.population.users} users, "
              f"{scenario.run.duration_s / 60:g} minutes, mean of {reps} replications ± 95% CI.", ""]
    return "\n".join(lines)


HEADER = """# Incidents

Public reports of token renewal gone wrong, each reproduced by a scenario in
`scenarios/incidents/` with its broken configuration and its fix as variants. The metrics are those
of [metrics.md](metrics.md): *spurious logouts* (a forced login while the server still held the
session valid), *revoked by a benign race* (reuse detection revoking a session for a token its own
client presented twice), *stranded refresh tokens* (valid on the server, held by no client) and the
time from the session's first refresh race to the logout. A session that hangs instead of logging
out (an orphaned lock) shows as expiry failures — requests that met an expired token and then
waited for ever — and as fewer requests issued.

Regenerate this page and its charts with `python -m sim.report.incidents`.
"""


def write_page(scenarios: list[Path], out_md: Path, charts: Path) -> None:
    """Run every scenario and write the page ``out_md`` with its charts (SVG) in ``charts``."""
    import sim

    charts.mkdir(parents=True, exist_ok=True)
    sections = [HEADER]
    for path in scenarios:
        result = sim.run(sim.load_scenario(path))
        fig = divergence_chart(result, path.stem.replace("_", " "))
        svg = charts / f"{path.stem}.svg"
        fig.savefig(svg, metadata={"Date": None})
        sections.append(incident_section(path, result, f"{charts.name}/{svg.name}"))
    out_md.write_text("\n".join(sections), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write docs/incidents.md from scenarios/incidents.")
    parser.add_argument("--scenarios", type=Path, default=Path("scenarios/incidents"))
    parser.add_argument("--out", type=Path, default=Path("docs/incidents.md"))
    args = parser.parse_args(argv)
    write_page(sorted(args.scenarios.glob("*.toml")), args.out, args.out.with_suffix(""))


if __name__ == "__main__":
    main()
