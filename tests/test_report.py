"""Reports and charts: files written, charts embedded, tables present, summary right, sweeps
detected, measured/partial runs labelled, missing numbers tolerated."""

from __future__ import annotations

import base64
import copy
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

import sim
from sim.cli import app
from sim.report import build_report, charts, summary
from sim.report.build import PER_RUN
from sim.report.sweep import varied_fields

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result() -> sim.RunResult:
    """A small real run of the smoke scenario: 2 replications, every variant."""
    scenario = sim.load_scenario(ROOT / "scenarios" / "smoke.toml").replace(
        population={"users": 20}, run={"duration_s": 600.0, "warmup_s": 60.0, "replications": 2})
    return sim.run(scenario, processes=1)


@pytest.fixture(scope="module")
def report(result, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert build_report([result], out) == out / "report.html"
    return out


def with_summary(result: sim.RunResult, column: str, values: dict[str, float]) -> sim.RunResult:
    """A copy of ``result`` whose aggregated ``column`` holds ``values`` per variant."""
    changed = copy.copy(result)
    changed.summary = result.summary.copy()
    for name, value in values.items():
        row = (changed.summary["strategy"] == name) & (changed.summary["replication"] == "mean")
        changed.summary.loc[row, column] = value
    return changed


def test_every_chart_is_a_valid_png_and_svg(report):
    for spec in PER_RUN:
        png = report / "charts" / f"{spec.name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC)
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 800 and height > 400
        root = ET.parse(report / "charts" / f"{spec.name}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_html_embeds_every_chart_and_runs_no_script(report, result):
    html = (report / "report.html").read_text(encoding="utf-8")
    for spec in PER_RUN:
        png = (report / "charts" / f"{spec.name}.png").read_bytes()
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in html
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must open offline"
    assert "<pre>" in html and "[population]" in html  # the resolved scenario closes it
    assert html.count("<table>") == len(PER_RUN)
    for name in result.scenario.names:
        assert f"<td>{name}</td>" in html


def test_markdown_has_a_table_under_every_chart(report, result):
    md = (report / "report.md").read_text(encoding="utf-8")
    for spec in PER_RUN:
        assert f"![{spec.heading}](charts/{spec.name}.png)" in md
    assert md.count("| variant |") == len(PER_RUN)
    assert "| Refresh rate (mints/s) |" in md
    for name in result.scenario.names:
        assert f"| {name} |" in md
    assert "```toml" in md


@pytest.mark.parametrize("lowest", [0, 3])
def test_summary_names_the_variant_with_the_lowest_refresh_load(result, lowest):
    names = result.scenario.names
    loads = {name: 2.0 + i for i, name in enumerate(names)}
    loads[names[lowest]] = 0.5
    text = summary([with_summary(result, "refresh_rate_per_s", loads)])
    assert f"{names[lowest]} has the lowest refresh load (0.5 renewal mints/s" in text


def test_summary_names_the_variant_with_the_fewest_failures(result):
    names = result.scenario.names
    changed = result
    for column in ("expiry_failures", "failed_requests", "forced_logins"):
        changed = with_summary(changed, column, {n: 10.0 for n in names} | {names[1]: 1.0})
    text = summary([changed])
    assert f"{names[1]} has the fewest failures: 3 in the window" in text


def test_summary_gives_the_cost_of_duplicates(result):
    names = result.scenario.names  # names[0]: dual token without rotation, one signature per duplicate
    changed = with_summary(result, "duplicate_tokens", {n: 0.0 for n in names} | {names[0]: 40.0})
    changed = with_summary(changed, "duplicate_per_1k_refresh", {n: 0.0 for n in names} | {names[0]: 125.0})
    text = summary([changed])
    assert f"{names[0]} mints 125 duplicate tokens per 1k refreshes (40 duplicates, 40 extra sign operations" in text


def test_measured_partial_run_with_missing_numbers_is_labelled_and_drawn(result, tmp_path):
    measured = copy.copy(result)
    measured.kind, measured.partial = "measured", True
    measured.timeseries = result.timeseries.assign(auth_busy_workers=np.nan, auth_queue_len=np.nan)
    measured.latency = result.latency.iloc[0:0]
    measured = with_summary(measured, "exposure_s_mean", {n: np.nan for n in result.scenario.names})
    build_report([measured], tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Measured (load test)" in html and "Partial run" in html
    assert "(measured, partial run)" in html
    for name in ("auth_tier", "latency_cdf", "tradeoff"):
        assert (tmp_path / "charts" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_chart_functions_return_figures(result):
    for draw in (charts.refresh_load, charts.headline, charts.auth_tier, charts.latency_cdf, charts.tradeoff):
        assert isinstance(draw(result), Figure)
    assert isinstance(charts.sweep([result, result]), Figure)


def test_cli_report_of_a_sweep(result, tmp_path):
    runs = []
    for users in (20, 40):
        run = copy.copy(result)
        run.scenario = result.scenario.replace(population={"users": users})
        runs.append(run.save(tmp_path / f"users-{users}"))
    assert varied_fields([sim.load_run(p) for p in runs]) == {"population.users": [20, 40]}
    table = charts.sweep_table([sim.load_run(p) for p in runs])
    assert list(table["population.users"].unique()) == [20, 40]

    out = tmp_path / "report"
    outcome = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out)])
    assert outcome.exit_code == 0, outcome.output
    assert (out / "charts" / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "charts" / "run2-headline.svg").is_file()
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "2 runs that differ in population.users (20, 40)" in md
